"""A rewrite stage's configuration is checked before anything runs: routing columns, methods,
derived source names, and the synthetic share."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from flows.validate import validate_pipeline


def _write(tmp_path, routes, sources=None, mixture=None) -> str:
    pq.write_table(pa.table({"text": ["a few words of text"]}), tmp_path / "web.parquet")
    stage = {"name": "rw", "kind": "rewrite", "params": {"routes": routes}}
    if sources is not None:
        stage["sources"] = sources
    cfg = {"name": "t", "lake": str(tmp_path / "lake"),
           "sources": [{"name": "web", "format": "parquet", "paths": [str(tmp_path / "web.parquet")]},
                       {"name": "web.wrap2", "format": "parquet", "paths": [str(tmp_path / "web.parquet")]}],
           "stages": [{"name": "gopher", "kind": "gopher_quality"}, stage],
           "release": {"name": "t", "select": "gopher.keep", **({"mixture": mixture} if mixture else {})}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _errors(path: str) -> str:
    return "\n".join(validate_pipeline(path).errors)


def test_a_good_stage_validates(tmp_path):
    path = _write(tmp_path, [{"method": "wrap", "when": "not gopher.keep", "budget_tokens": 1000}],
                  mixture={"method": "proportional", "synthetic_share": 0.2})
    assert _errors(path) == ""


def test_problems_are_reported_before_running(tmp_path):
    errs = _errors(_write(tmp_path, [{"method": "wrap", "when": "fineweb.keep"}]))
    assert "fineweb" in errs  # a routing column no earlier stage writes
    errs = _errors(_write(tmp_path, [{"method": "wrapp"}]))
    assert "wrapp" in errs  # unknown method
    errs = _errors(_write(tmp_path, [{"method": "wrap", "name": "wrap2"}]))
    assert "web.wrap2" in errs and "ingested source" in errs  # derived name clashes with a source
    errs = _errors(_write(tmp_path, [{"method": "wrap"}, {"method": "wrap"}]))
    assert "unique" in errs
    errs = _errors(_write(tmp_path, [{"method": "wrap", "when": "gopher.keep and ("}]))
    assert "cannot parse" in errs
    errs = _errors(_write(tmp_path, [{"method": "wrap"}], mixture={"method": "proportional", "synthetic_share": 1.5}))
    assert "synthetic_share" in errs


def _stage(inference: dict, **extra):
    from rewriting.stage import RewriteStage
    return RewriteStage({"inference": inference, "routes": [{"method": "wrap", "when": "not gopher.keep"}], **extra})


def test_speed_knobs_leave_the_stage_key_and_the_derived_fingerprint_alone():
    """Batch sizes and threads change how fast replies come, not which: the same key (annotations
    and derived shards reused), while the model or the sampling seed of a route make a new one."""
    base = _stage({"model": "smollm2-135m-instruct"})
    faster = _stage({"model": "smollm2-135m-instruct", "batch_size": 32, "threads": 2},
                    chunk_prompts=16, parents_per_batch=8)
    assert faster.key("rw") == base.key("rw")
    assert faster.generation_hash() == base.generation_hash()
    other_model = _stage({"model": "another-model"})
    assert other_model.key("rw") != base.key("rw") and other_model.generation_hash() != base.generation_hash()
    longer_inputs = _stage({"model": "smollm2-135m-instruct", "max_input_tokens": 1024})
    assert longer_inputs.key("rw") != base.key("rw")  # a longer prompt is a different reply


def test_a_rewrite_worker_reserves_what_its_backend_needs():
    assert _stage({"backend": "vllm"}).resources().gpus == 1.0
    cpu = _stage({"backend": "transformers", "threads": 2}).resources()
    assert (cpu.cpus, cpu.gpus) == (2.0, 0.0)
    assert _stage({"backend": "openai"}).resources().gpus == 0.0
    assert _stage({}).stateful  # one model load per long-lived worker


def test_the_run_summary_names_the_second_pass_over_derived_shards():
    """A stage that runs again after a rewrite (over the derived shards) is labelled, not listed
    twice under the same name (a first-time user read that as a bug)."""
    from flows.cli import _label_passes
    rows = [{"stage": "gopher", "computed": 4}, {"stage": "rw", "computed": 4}, {"stage": "gopher", "computed": 2}]
    assert [r["stage"] for r in _label_passes(rows)] == ["gopher", "rw", "gopher (again: derived shards)"]
    assert _label_passes(rows)[2]["computed"] == 2
