"""The Ray executor against the local one (issue 13's proof), on real local Ray clusters.

- conformance: the demo pipeline (model stages left out: they are not the subject) under the local
  executor and under Ray gives byte-identical release shards and identical catalog counts;
- two nodes: ``ray start --head`` plus a second ``ray start --address`` on this machine, the
  pipeline spread over both, while a Ray worker is SIGKILLed mid-shard (Ray retries it);
- driver killed (SIGKILL) mid-stage, then re-run: the same release, finished shards untouched.

The lake is local here: the storage layer that puts it on S3 is another branch of issue 13.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

import tests.plugins  # noqa: F401 - registers the test stages
from flows.pipeline import run_pipeline
from tests.conftest import REPO
from tests.helpers import demo_config

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

MODEL_KINDS = ("llm_grader", "perplexity", "embed", "semantic_dedup")
COUNTS = {
    "stage_runs": "SELECT stage, status, count(*), sum(rows), sum(row_errors) FROM stage_runs "
                  "WHERE run_id = (SELECT max(run_id) FROM runs WHERE status = 'completed') GROUP BY ALL ORDER BY ALL",
    "shards": "SELECT source, count(*), sum(rows), sum(text_bytes) FROM shards GROUP BY ALL ORDER BY ALL",
    "quarantine": "SELECT count(*) FROM quarantine",
    "artifacts": "SELECT stage, stage_key FROM artifacts ORDER BY ALL",
}


def pipeline_file(root: Path, demo_dir: Path, executor: dict, where_seconds: float = 0.0) -> Path:
    cfg = demo_config(demo_dir, root / "lake", drop_kinds=MODEL_KINDS)
    cfg["release"]["select"] = cfg["release"]["select"].replace(" and sem.keep", "")
    cfg["executor"] = {"batch_rows": 1024, "shard_bytes": 2_000_000, **executor}
    # A probe of where each shard ran (not in the selection: the release does not depend on it).
    cfg["stages"].append({"name": "where", "kind": "test_where", "params": {"seconds_per_batch": where_seconds}})
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


def release_files(lake: Path) -> dict[str, str]:
    """sha256 of every release shard, by name."""
    [version] = [p for p in (lake / "releases" / "demo").iterdir() if (p / "manifest.json").exists()]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(version.rglob("*.parquet"))}


def catalog_counts(lake: Path) -> dict[str, list]:
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        return {name: con.execute(q).fetchall() for name, q in COUNTS.items()}
    finally:
        con.close()


def without_stage(counts: dict[str, list], stage: str) -> dict[str, list]:
    return {**counts, "stage_runs": [r for r in counts["stage_runs"] if r[0] != stage]}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, demo_dir):
    """The reference: the pipeline under the local executor."""
    root = tmp_path_factory.mktemp("local")
    run_pipeline(str(pipeline_file(root, demo_dir, {"kind": "local", "workers": 2})))
    lake = root / "lake"
    return release_files(lake), catalog_counts(lake), lake


def test_conformance_local_vs_private_ray(tmp_path, demo_dir, local_run):
    """``kind: ray`` with no address starts a Ray for the run: same release bytes, same counts."""
    ref_files, ref_counts, ref_lake = local_run
    out = run_pipeline(str(pipeline_file(tmp_path, demo_dir, {"kind": "ray", "workers": 2})))
    assert out["release"]["rows"] > 0
    assert release_files(tmp_path / "lake") == ref_files
    assert catalog_counts(tmp_path / "lake") == ref_counts
    # The annotations are byte-identical too (the same run_shard wrote them); the probe differs.
    lake = tmp_path / "lake"
    anns = [a.relative_to(lake) for a in lake.glob("annotations/*/*/*/part-*.parquet")]
    assert anns and sorted(anns) == sorted(a.relative_to(ref_lake) for a in ref_lake.glob("annotations/*/*/*/part-*.parquet"))
    for a in anns:
        if not a.parts[1].startswith("where@"):
            assert (lake / a).read_bytes() == (ref_lake / a).read_bytes(), a


@pytest.fixture(scope="module")
def two_nodes():
    from tests.raycluster import TwoNodeRay
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    cluster = TwoNodeRay(env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_two_nodes_with_a_worker_killed_mid_shard(tmp_path, demo_dir, local_run, two_nodes):
    ref_files, ref_counts, _ = local_run
    once = tmp_path / "once"
    once.mkdir()
    p = pipeline_file(tmp_path, demo_dir, {"kind": "ray", "address": two_nodes.address}, where_seconds=0.3)
    # The first Ray worker to reach the middle of a shard SIGKILLs itself; Ray retries the shard.
    run = _curate_run(p, _env(tmp_path, two_nodes.auth, CURATE_FAULT="shard:mid_write",
                              CURATE_FAULT_ONCE_DIR=str(once)))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (once / "shard_mid_write").exists(), "no worker was killed: the fault point never fired"
    lake = tmp_path / "lake"
    assert release_files(lake) == ref_files
    assert without_stage(catalog_counts(lake), "where") == without_stage(ref_counts, "where")
    nodes = {n for f in lake.glob("annotations/where@*/*/*/part-*.parquet")
             for n in pq.read_table(f, columns=["node"]).column("node").to_pylist()}
    assert len(nodes) == 2 and "" not in nodes, f"shards ran on {nodes}, not on both nodes"


def _env(root: Path, auth: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(os.environ, **auth, PYTHONPATH=str(REPO), CURATE_PLUGINS="tests.plugins", CURATE_PROGRESS="0",
               PREFECT_HOME=str(root / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    env.pop("PREFECT_API_URL", None)
    return env


def _curate_run(pipeline: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``curate run`` in a process group of its own; whatever it leaves behind when it is killed
    (its temporary Prefect server) is ended with the group. Output goes to a file, not a pipe an
    orphan could hold open."""
    log = pipeline.parent / f"run-{time.time_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(errors="replace"), "")


def test_driver_killed_mid_stage_then_rerun(tmp_path, demo_dir, local_run, two_nodes):
    ref_files, ref_counts, _ = local_run
    once = tmp_path / "once"
    once.mkdir()
    p = pipeline_file(tmp_path, demo_dir, {"kind": "ray", "address": two_nodes.address})
    lake = tmp_path / "lake"
    crashed = _curate_run(p, _env(tmp_path, two_nodes.auth, CURATE_FAULT="ray:driver_after_shard", CURATE_FAULT_ONCE_DIR=str(once)))
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-2000:] + crashed.stderr[-2000:]
    assert not list(lake.glob("releases/demo/*/manifest.json"))
    done = {f: (f.stat().st_mtime_ns, f.stat().st_ino)
            for f in [*lake.glob("annotations/*/*/*/part-*.parquet"), *lake.glob("raw/*/*/part-*.parquet")]}
    assert any("annotations" in str(f) for f in done), "the driver died before any shard was annotated"
    time.sleep(1)  # mtimes of a rewrite would differ

    again = _curate_run(p, _env(tmp_path, two_nodes.auth))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for f, stamp in done.items():
        assert (f.stat().st_mtime_ns, f.stat().st_ino) == stamp, f"{f} was recomputed"
    assert release_files(lake) == ref_files
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    skipped = con.execute("SELECT count(*) FROM stage_runs WHERE status = 'skipped' AND run_id = "
                          "(SELECT max(run_id) FROM runs WHERE status = 'completed')").fetchone()[0]
    con.close()
    assert skipped >= sum("annotations" in str(f) for f in done)
    json.dumps(catalog_counts(lake), default=str)  # the catalog is readable after the crash


def test_actors_errors_and_teardown_like_the_local_executor(tmp_path, corpora):
    """Stateful stages on actors (one set-up per actor, torn down at the end); a bad row costs its
    row, a bad shard is a failed result with its error: the same results as the local executor."""
    from engines.executor import LocalExecutor, ShardTask
    from engines.ray_executor import RayExecutor
    from engines.stage import stage_class
    from schemas.config import ExecutorConfig
    from tests.helpers import make_lake, real_texts
    from warehouse.lake import Lake

    texts = real_texts(corpora, "python_docs", 120)
    make_lake(tmp_path / "lake", {"python_docs": [texts[i:i + 20] for i in range(0, 120, 20)]})
    lake = Lake(str(tmp_path / "lake"))
    raws = lake.raw_shards("python_docs")
    log = tmp_path / "setups.log"
    setups = stage_class("test_setups")({"log": str(log)})
    trap = stage_class("test_trap")({"trap": "Guido"})

    def tasks(stage, name, root):
        out = [ShardTask("python_docs", p, f"{root}/{stage.key(name)}/{i}.parquet") for i, p in enumerate(raws)]
        return out + [ShardTask("python_docs", str(tmp_path / "missing.parquet"), f"{root}/{stage.key(name)}/x.parquet")]

    got = {}
    for kind, ex in (("local", LocalExecutor(ExecutorConfig(workers=2), show_progress=False)),
                     ("ray", RayExecutor(ExecutorConfig(kind="ray", workers=2), show_progress=False))):
        with ex:
            root = tmp_path / kind
            res = ex.run_stage("s", setups, tasks(setups, "s", root)) + ex.run_stage("t", trap, tasks(trap, "t", root))
        got[kind] = [(r.status, r.rows, r.row_errors, (r.error or "").split(":")[0]) for r in res]
        if kind == "ray":
            lines = log.read_text().split()
            pids = {"setup": [], "teardown": []}
            for what, pid in zip(lines[::2], lines[1::2]):
                pids[what].append(pid)
            assert 1 <= len(pids["setup"]) <= 2 and sorted(pids["setup"]) == sorted(pids["teardown"]), lines
        log.write_text("")
    assert got["ray"] == got["local"]
    assert [s for s, *_ in got["ray"]].count("failed") == 2  # the missing shard, under each stage
    assert any(e > 0 for _, _, e, _ in got["ray"])  # the trap's rows were isolated, not the shard


def test_llm_grader_on_a_ray_actor_matches_the_local_executor(tmp_path, corpora):
    """A model stage through the Ray executor: one model load per actor (transformers backend on
    CPU; with ``backend: vllm`` the same stage asks for a GPU per actor), the same grades as local."""
    from engines.executor import LocalExecutor, ShardTask
    from engines.ray_executor import RayExecutor
    from engines.stage import StageContext, stage_class
    from flows.registry import load_stages
    from schemas.config import ExecutorConfig
    from tests.helpers import make_lake, real_texts
    from warehouse.lake import Lake

    load_stages()
    texts = real_texts(corpora, "wiki_en", 6)
    make_lake(tmp_path / "lake", {"wiki_en": [texts[:3], texts[3:]]})
    lake = Lake(str(tmp_path / "lake"))
    params = {"grader": "ask_llm", "sample_rate": 1.0,
              "inference": {"backend": "transformers", "model": "smollm2-135m-instruct", "max_input_tokens": 64,
                            "threads": 1}}
    grades = {}
    for kind, ex in (("local", LocalExecutor(ExecutorConfig(workers=1), show_progress=False)),
                     ("ray", RayExecutor(ExecutorConfig(kind="ray", workers=1), show_progress=False))):
        stage = stage_class("llm_grader")(params)
        assert stage.stateful and stage.resources().gpus == 0
        tasks = [ShardTask("wiki_en", p, f"{tmp_path}/{kind}/{i}.parquet") for i, p in enumerate(lake.raw_shards("wiki_en"))]
        with ex:  # separate caches: the Ray run must grade, not read the local run's results
            res = ex.run_stage("grade", stage, tasks, StageContext(cache_dir=str(tmp_path / f"cache-{kind}")))
        assert [r.status for r in res] == ["computed", "computed"], [r.error for r in res]
        grades[kind] = [s for t in tasks for s in pq.read_table(t.out_path).column("score").to_pylist()]
    assert all(g is not None for g in grades["ray"])
    assert grades["ray"] == pytest.approx(grades["local"], abs=1e-6)
