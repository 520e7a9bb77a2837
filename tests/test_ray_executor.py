"""The Ray executor against the local one (issue 13's proof), on real local Ray clusters.

- conformance: the demo pipeline (model stages left out: they are not the subject) under the local
  executor and under Ray gives byte-identical release shards and identical catalog counts;
- two nodes: ``ray start --head`` plus a second ``ray start --address`` on this machine, the
  pipeline spread over both, while a Ray worker is SIGKILLed mid-shard (Ray retries it);
- driver killed (SIGKILL) mid-stage, then re-run: the same release, finished shards untouched.

The rewrite stage (SmolLM2 on CPU) generates once per test session: in the local reference run,
unless another module's demo run made the same seeded generations first (``model_results``); each Ray
run finds them in its lake's cache (``share_cache``), as a rerun would, so the derived documents
still go through the Ray executor's map but the model's minutes are not spent four times.

The two-node runs put the lake on a real S3-protocol server (moto's, ``s3_server``): the pipeline
file is the local reference's with ``executor.kind: ray`` and ``lake: s3://...``, nothing else. The
cluster's nodes are started without the S3 variables (as a cluster that knows nothing of this
lake): the workers reach it only with what the driver forwards (``ray_executor.worker_env``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import fsspec
import pyarrow.parquet as pq
import pytest
import yaml

import tests.plugins  # noqa: F401 - registers the test stages
from flows.pipeline import run_pipeline
from tests.conftest import REPO
from tests.helpers import REWRITES, demo_config, share_cache
from warehouse.lake import Lake

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


def pipeline_file(root: Path, demo_dir: Path, executor: dict, where_seconds: float = 0.0,
                  lake: str | None = None, meet_dir: Path | None = None) -> Path:
    cfg = demo_config(demo_dir, lake or root / "lake", drop_kinds=MODEL_KINDS)
    cfg["release"]["select"] = cfg["release"]["select"].replace(" and sem.keep", "")
    cfg["executor"] = {"batch_rows": 1024, "shard_bytes": 2_000_000, **executor}
    # A probe of where each shard ran (not in the selection: the release does not depend on it).
    where: dict = {"seconds_per_batch": where_seconds}
    if meet_dir is not None:
        where["meet_dir"] = str(meet_dir)
    cfg["stages"].append({"name": "where", "kind": "test_where", "params": where})
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


def release_files(lake: Path | str) -> dict[str, str]:
    """sha256 of every release shard, by name (a local lake or an ``s3://`` one)."""
    fs, root = fsspec.core.url_to_fs(str(lake))
    fs.invalidate_cache()
    [manifest] = fs.glob(f"{root}/releases/demo/*/manifest.json")
    return {p.rsplit("/", 1)[-1]: hashlib.sha256(fs.cat_file(p)).hexdigest()
            for p in sorted(fs.find(manifest.rsplit("/", 1)[0])) if p.endswith(".parquet")}


def catalog_counts(lake: Path | str, catalog: Path | None = None) -> dict[str, list]:
    """The COUNTS queries on a lake's catalog (``catalog``: where a remote lake's run kept it)."""
    con = duckdb.connect(str(catalog or Lake(str(lake)).catalog_path), read_only=True)
    try:
        return {name: con.execute(q).fetchall() for name, q in COUNTS.items()}
    finally:
        con.close()


def without_stage(counts: dict[str, list], stage: str) -> dict[str, list]:
    return {**counts, "stage_runs": [r for r in counts["stage_runs"] if r[0] != stage]}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, demo_dir, model_results):
    """The reference: the pipeline under the local executor (its rewrites from the session's
    store when a module made them already, else generated here and left there)."""
    root = tmp_path_factory.mktemp("local")
    lake = root / "lake"
    share_cache(model_results, lake, REWRITES, required=False)
    run_pipeline(str(pipeline_file(root, demo_dir, {"kind": "local", "workers": 2})))
    share_cache(lake, model_results, REWRITES)
    return release_files(lake), catalog_counts(lake), lake


def test_conformance_local_vs_private_ray(tmp_path, demo_dir, local_run):
    """``kind: ray`` with no address starts a Ray for the run: same release bytes, same counts."""
    ref_files, ref_counts, ref_lake = local_run
    share_cache(ref_lake, str(tmp_path / "lake"))
    out = run_pipeline(str(pipeline_file(tmp_path, demo_dir, {"kind": "ray", "workers": 2})))
    assert out["release"]["rows"] > 0
    assert release_files(tmp_path / "lake") == ref_files
    assert catalog_counts(tmp_path / "lake") == ref_counts
    # The Ray workers found every generation in the lake's shared cache (none made again).
    con = duckdb.connect(str(tmp_path / "lake" / "catalog.duckdb"), read_only=True)
    routes = con.execute("SELECT route, generated, from_cache FROM rewrite_summary ORDER BY route").fetchall()
    con.close()
    assert routes and all(gen > 0 and cached == gen for _, gen, cached in routes), routes
    # The annotations are byte-identical too (the same run_shard wrote them); the probe differs.
    lake = tmp_path / "lake"
    anns = [a.relative_to(lake) for a in lake.glob("annotations/*/*/*/part-*.parquet")]
    assert anns and sorted(anns) == sorted(a.relative_to(ref_lake) for a in ref_lake.glob("annotations/*/*/*/part-*.parquet"))
    for a in anns:
        if not a.parts[1].startswith("where@"):
            assert (lake / a).read_bytes() == (ref_lake / a).read_bytes(), a
    # The exact and MinHash dedup fits ran as map and reduce tasks (engines.ray_fit): the same
    # artifacts, byte for byte, and the same record of the fit but for its time and timings.
    dedup = sorted(a.relative_to(ref_lake) for stage in ("dedup", "fuzzy")
                   for a in ref_lake.glob(f"artifacts/{stage}@*/**/*") if a.is_file())
    assert {a.parts[1].split("@")[0] for a in dedup} == {"dedup", "fuzzy"}, dedup
    for a in dedup:
        if a.name == "_fit.json":
            assert _fit_record(lake / a) == _fit_record(ref_lake / a), a
        else:
            assert (lake / a).read_bytes() == (ref_lake / a).read_bytes(), a


def _fit_record(path: Path) -> dict:
    record = json.loads(path.read_text())
    record.pop("fitted_at")
    record.pop("run_id", None)
    record["metrics"].pop("seconds", None)
    return record


@pytest.fixture(scope="module")
def two_nodes():
    from tests.raycluster import TwoNodeRay
    # The nodes know nothing of the S3 server: the workers reach the lake only with what the driver sends.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    cluster = TwoNodeRay(env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_two_nodes_lake_on_s3_with_a_worker_killed_mid_shard(tmp_path, demo_dir, local_run, two_nodes, s3_server):
    ref_files, ref_counts, _ = local_run
    once = tmp_path / "once"
    once.mkdir()
    lake = f"{s3_server.bucket()}/lake"
    share_cache(local_run[2], lake)
    p = pipeline_file(tmp_path, demo_dir, {"kind": "ray", "address": two_nodes.address}, where_seconds=0.3, lake=lake,
                      meet_dir=tmp_path / "meet")
    # The first Ray worker to reach the middle of a shard SIGKILLs itself; Ray retries the shard.
    run = _curate_run(p, _env(tmp_path, two_nodes.auth, CURATE_FAULT="shard:mid_write",
                              CURATE_FAULT_ONCE_DIR=str(once), PREFECT_LOGGING_LEVEL="INFO"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (once / "shard_mid_write").exists(), "no worker was killed: the fault point never fired"
    assert "workers get AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL" in run.stdout, run.stdout[-3000:]
    assert "accounting unavailable" not in run.stdout  # the end-of-run summary found the remote lake's catalog
    assert release_files(lake) == ref_files
    assert without_stage(catalog_counts(lake, tmp_path / "catalog.duckdb"), "where") == without_stage(ref_counts, "where")
    fs, root = fsspec.core.url_to_fs(lake)
    nodes = {n for f in fs.glob(f"{root}/annotations/where@*/*/*/part-*.parquet")
             for n in pq.read_table(f, columns=["node"], filesystem=fs).column("node").to_pylist()}
    assert len(nodes) == 2 and "" not in nodes, f"shards ran on {nodes}, not on both nodes"


def _env(root: Path, auth: dict[str, str], **extra: str) -> dict[str, str]:
    """The driver's environment: the test's (with the S3 server's AWS_* variables), its own Prefect
    home, and a scratch folder and catalog of its own for a remote lake."""
    env = dict(os.environ, **auth, PYTHONPATH=str(REPO), CURATE_PLUGINS="tests.plugins", CURATE_PROGRESS="0",
               PREFECT_HOME=str(root / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               CURATE_SCRATCH=str(root / "scratch"), CURATE_CATALOG=str(root / "catalog.duckdb"), **extra)
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


def _finished(lake: str) -> dict[str, tuple[str, str]]:
    """(last modified, ETag) of every finished raw shard and annotation on the S3 lake."""
    fs, root = fsspec.core.url_to_fs(lake)
    fs.invalidate_cache()
    return {k: (str(v["LastModified"]), v["ETag"]) for pattern in ("annotations/*/*/*/part-*.parquet",
                                                                    "raw/*/*/part-*.parquet")
            for k, v in fs.glob(f"{root}/{pattern}", detail=True).items()}


def test_driver_killed_mid_stage_then_rerun_from_a_ray_client_lake_on_s3(tmp_path, demo_dir, local_run, two_nodes,
                                                                         s3_server):
    """The driver SIGKILLed mid-stage, then the same command again, this time from a Ray client
    (``address: ray://...``: the driver's process is on no cluster node, as off a real cluster):
    finished shards untouched, the local executor's release. Every fit ran in the re-run: the
    single-task ones (fastText quality, decontamination, perplexity correlation) staged their
    folder on the node that ran them and uploaded it themselves; the dedup fits ran as map and
    reduce tasks with their finish in the driver."""
    ref_files, ref_counts, _ = local_run
    once = tmp_path / "once"
    once.mkdir()
    lake = f"{s3_server.bucket()}/lake"
    share_cache(local_run[2], lake)
    p = pipeline_file(tmp_path, demo_dir, {"kind": "ray", "address": two_nodes.address}, lake=lake)
    crashed = _curate_run(p, _env(tmp_path, two_nodes.auth, CURATE_FAULT="ray:driver_after_shard", CURATE_FAULT_ONCE_DIR=str(once)))
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-2000:] + crashed.stderr[-2000:]
    fs, root = fsspec.core.url_to_fs(lake)
    assert not fs.glob(f"{root}/releases/demo/*/manifest.json")
    assert not fs.glob(f"{root}/artifacts/*/_fit.json"), "a fit finished before the crash: the re-run would not fit"
    done = _finished(lake)
    assert any("/annotations/" in k for k in done), "the driver died before any shard was annotated"
    time.sleep(1.1)  # S3's LastModified has one-second resolution: a rewrite would show

    client = pipeline_file(tmp_path / "client", demo_dir, {"kind": "ray", "address": two_nodes.client_address},
                           lake=lake)
    again = _curate_run(client, _env(tmp_path, two_nodes.auth, PREFECT_LOGGING_LEVEL="INFO"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"ray: connected to {two_nodes.client_address} (2 nodes" in again.stdout, again.stdout[-3000:]
    for kind in ("fasttext_quality", "decontaminate", "perplexity_correlation"):
        assert re.search(rf"fit of {kind} over \d+ shards: .* on Ray \(node \w+, [1-9]\d* files uploaded to the "
                         r"lake by the task\)", again.stdout), (kind, again.stdout[-3000:])
    assert "fit of minhash_dedup over" in again.stdout and "map tasks" in again.stdout
    now = _finished(lake)
    for k, stamp in done.items():
        assert now.get(k) == stamp, f"{k} was recomputed"
    assert release_files(lake) == ref_files
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    skipped = con.execute("SELECT count(*) FROM stage_runs WHERE status = 'skipped' AND run_id = "
                          "(SELECT max(run_id) FROM runs WHERE status = 'completed')").fetchone()[0]
    con.close()
    assert skipped >= sum("/annotations/" in k for k in done)
    counts = catalog_counts(lake, tmp_path / "catalog.duckdb")  # readable after the crash
    # The same shards, quarantine and artifacts as the reference (its stage runs were split over two runs).
    assert {k: v for k, v in counts.items() if k != "stage_runs"} == {k: v for k, v in ref_counts.items()
                                                                     if k != "stage_runs"}


_RAY_FIT = """
import json, logging, sys
from engines.executor import ShardTask
from engines.ray_executor import RayExecutor
from filters.exact_dedup import ExactDedup
from filters.minhash.dedup import MinHashDedup
from schemas.config import ExecutorConfig
logging.basicConfig(level=logging.INFO)
kinds = {"exact_dedup": ExactDedup, "minhash_dedup": MinHashDedup}
def shard_tasks(shards):
    return [ShardTask(s, p, "", tuple(tuple(i) for i in fed)) for s, p, fed in shards]
with RayExecutor(ExecutorConfig(kind="ray", address=sys.argv[1], batch_rows=64), show_progress=False) as ex:
    for kind, params, out, shards, previous, earlier in json.loads(sys.argv[2]):
        tasks, stage = shard_tasks(shards), kinds[kind](params)
        print(json.dumps(ex.fit_incremental(stage, previous, tasks, shard_tasks(earlier), out) if previous
                         else ex.fit(stage, tasks, out)))
"""


def test_dedup_fits_as_map_and_reduce_tasks_on_two_nodes(tmp_path, corpora, two_nodes):
    """On the cluster (engines.ray_fit): the exact-dedup fit (one map task per shard, one reduce
    task per hash partition), its nightly update (the same over the new shards, merged into the
    earlier index), the MinHash-dedup fit (one map task per shard, one reduce task per group of
    band partitions, then verification and clustering in the driver) and its nightly update (map
    over the new shards, reduce merged into the earlier band index, earlier and new documents of
    candidate pairs reread by tasks) write the local executor's artifacts, byte for byte, and its
    metrics. The driver is a process of its own (a process joins one Ray cluster once)."""
    from engines.executor import LocalExecutor
    from filters.exact_dedup import ExactDedup
    from filters.minhash.dedup import MinHashDedup
    from schemas.config import ExecutorConfig
    from tests.minhash.test_partitioned_fit import artifact_files, dedup_tasks, planted_minhash_lake, without_seconds
    from tests.test_exact_dedup import planted_lake, planted_night

    _, order = planted_lake(tmp_path / "lake", corpora)
    night = planted_night(tmp_path / "lake", corpora)
    near = planted_minhash_lake(tmp_path / "near", corpora)
    prev, near_prev = tmp_path / "exact-previous", tmp_path / "minhash-previous"
    fits = [("exact_dedup", {}, [(s, p, []) for s, p in order], None, []),
            ("exact_dedup", {}, [("news", p, []) for p in night], str(prev), []),
            ("minhash_dedup", {"partitions": 5}, near, None, []),
            ("minhash_dedup", {"partitions": 5}, near[2:], str(near_prev), near[:2])]
    kinds = {"exact_dedup": ExactDedup, "minhash_dedup": MinHashDedup}
    local = []
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=64), show_progress=False) as ex:
        prev.mkdir()
        near_prev.mkdir()
        ex.fit(ExactDedup(), dedup_tasks(fits[0][2]), str(prev))
        ex.fit(MinHashDedup({"partitions": 5}), dedup_tasks(near[:2]), str(near_prev))
        for i, (kind, params, shards, previous, earlier) in enumerate(fits):
            (tmp_path / f"local-{i}").mkdir()
            (tmp_path / f"ray-{i}").mkdir()
            stage, tasks = kinds[kind](params), dedup_tasks(shards)
            local.append(ex.fit_incremental(stage, previous, tasks, dedup_tasks(earlier), str(tmp_path / f"local-{i}"))
                         if previous else ex.fit(stage, tasks, str(tmp_path / f"local-{i}")))
    spec = [(kind, params, str(tmp_path / f"ray-{i}"), shards, previous, earlier)
            for i, (kind, params, shards, previous, earlier) in enumerate(fits)]
    run = subprocess.run([sys.executable, "-c", _RAY_FIT, two_nodes.address, json.dumps(spec)],
                         cwd=REPO, env=_env(tmp_path, two_nodes.auth), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for line in ("fit of exact_dedup over 4 shards: 4 map tasks, 2 partitions",
                 "incremental fit of exact_dedup over 2 shards: 2 map tasks, 2 partitions",
                 "fit of minhash_dedup over 5 shards: 5 map tasks, 2 partitions",
                 "incremental fit of minhash_dedup over 3 shards: 3 map tasks, 2 partitions"):
        assert line in run.stderr, run.stderr[-3000:]
    got = [json.loads(line) for line in run.stdout.strip().splitlines()[-4:]]
    assert got[:2] == local[:2] and got[0]["duplicates"] == 4 and got[1]["new_duplicates"] == 6
    assert without_seconds(got[2]) == without_seconds(local[2]) and got[2]["duplicates"] >= 100
    assert without_seconds(got[3]) == without_seconds(local[3]) and got[3]["new_documents"] > 0
    for i in range(4):
        assert artifact_files(tmp_path / f"ray-{i}") == artifact_files(tmp_path / f"local-{i}"), fits[i][:2]


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
