"""The user path of MinHash dedup: ``curate run`` on a pipeline file with the two MinHash stages.

What a user runs, measured from outside (one process tree, wall clock), on the benchmark's peer
input (Parquet files with ``id`` and ``text``):

1. ``curate run ingest.yaml``: the same source with no stage (ingest and a release of
   everything): the ingest, measured separately.
2. ``curate run pipeline.yaml`` on the same lake: the input is already ingested (skipped), then
   ``minhash_signatures`` and ``minhash_dedup`` run and the release keeps ``near_dup.keep``.
   Its wall time is the user-path figure.

Where the second run's time goes comes from the catalog's timestamps (run start, each stage's
last shard, the fit artifact, the release, run end), the command's own start-up timestamps
(``at_prefect_launched_s``, ``at_cli_s``, ``at_validated_s``, ``at_imported_s``, ``at_warmed_s``,
``at_prefect_ready_s``, ``at_flow_start_s``, ``at_end_s``:
seconds since the process started; ``prefect_wait_s``: how long it still waited for Prefect's
server), plus two small probes run the same way: the interpreter with the CLI's imports, and
Prefect's own temporary server path (a flow that does nothing, in a process that did not start
a server early).

    .venv/bin/python -m benchmarks.dedup.user_path --input /tmp/dedup-bench/input-200k-s7 --work /tmp/up

``benchmarks/dedup/run.py`` runs this as the tool ``curate-run`` beside the others. With
``--prefect-server running`` the runs report to one real Prefect server started before them (a
user who runs ``prefect server start`` and sets ``PREFECT_API_URL``): no server starts per run,
and the server's own CPU seconds during the run are printed apart (``server_cpu_s``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SOURCE = "bench"


def pipeline_yaml(inputs: Path, lake: Path, stages: bool, workers: int, threshold: float) -> str:
    body = f"""name: dedupbench
lake: {lake}
executor: {{workers: {workers}, batch_rows: 4096}}
sources:
  - name: {SOURCE}
    format: parquet
    paths: [{inputs}/*.parquet]
    columns: {{text: text, id: id}}
"""
    if stages:
        body += f"""stages:
  - {{name: minhash, kind: minhash_signatures, params: {{ngram: 5, num_perm: 112, bands: 14, rows: 8}}}}
  - {{name: near_dup, kind: minhash_dedup, params: {{threshold: {threshold}, survivor: first}}}}
release: {{name: dedup, select: "near_dup.keep"}}
"""
    else:
        body += "stages: []\nrelease: {name: everything, select: \"true\"}\n"
    return body


def _timed(cmd: list[str], env: dict[str, str], log: Path, cpu: list[float] | None = None,
           samples: list[tuple[float, float]] | None = None) -> float:
    """Wall seconds of ``cmd`` (its CPU seconds, all processes, appended to ``cpu`` when given;
    with ``samples``, (unix time, CPU seconds of its process tree so far) every 0.1 s)."""
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        done = threading.Event()
        sampler = None
        if samples is not None:
            sampler = threading.Thread(target=_sample_tree, args=(proc.pid, samples, done), daemon=True)
            sampler.start()
        rc = proc.wait()
        done.set()
        if sampler is not None:
            sampler.join()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({rc}); see {log}")
    if cpu is not None:
        cpu.append((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime))
    return wall


def _tree_cpu(root: int) -> float:
    """CPU seconds so far of ``root`` and its live descendants (/proc; Linux). A child that has
    exited is counted in its parent's ``cutime``/``cstime`` once reaped, so those are added too."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(f[1]), []).append(pid)
        cpu[pid] = sum(int(x) for x in f[11:15]) / tick  # utime, stime, cutime, cstime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def _sample_tree(root: int, samples: list[tuple[float, float]], done: threading.Event) -> None:
    while not done.wait(0.1):
        samples.append((time.time(), _tree_cpu(root)))


def phase_cpu(marks: list[tuple[str, float]], samples: list[tuple[float, float]], total: float) -> dict[str, float]:
    """CPU seconds of the run's process tree per phase: between consecutive catalog timestamps
    (``marks``, unix times), the first phase from the process start, the last to its exit
    (``total``: the run's CPU seconds from getrusage). Sampled every 0.1 s: each figure is
    good to about 0.1 s times the cores in use."""
    import bisect

    if not samples:
        return {}
    times = [t for t, _ in samples]

    def at(t: float) -> float:
        i = bisect.bisect_right(times, t) - 1
        return samples[i][1] if i >= 0 else 0.0

    out, prev = {}, 0.0
    for name, t in marks:
        now = at(t)
        out[f"{name}_cpu_s"] = round(now - prev, 2)
        prev = now
    out["after_flow_cpu_s"] = round(total - prev, 2)
    return out


def _env() -> dict[str, str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CURATE_PROGRESS": "0",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "CURATE_STARTUP_TIMES": "1"}
    env.setdefault("PREFECT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "curate-bench-prefect"))
    return env


def probes(work: Path, env: dict[str, str]) -> dict[str, float]:
    """Seconds of: the interpreter with the CLI's imports; the same plus a flow that does nothing
    (Prefect's temporary server start and shutdown)."""
    py = sys.executable
    imports = _timed([py, "-c", "import flows.cli, flows.pipeline"], env, work / "probe-imports.log")
    flow = ("import flows.cli, flows.pipeline\nfrom prefect import flow\n@flow\ndef nothing():\n    return 1\n"
            "nothing()\n")
    empty_flow = _timed([py, "-c", flow], env, work / "probe-flow.log")
    return {"interpreter_imports_s": imports, "prefect_server_s": max(0.0, empty_flow - imports)}


def timeline_marks(lake: Path) -> list[tuple[str, datetime]]:
    """The catalog's timestamps of the last run, in order: ``before_flow`` (the run's start), then
    the end of each stage's fit and apply, the release, ``report_catalog`` (the run's end)."""
    import duckdb

    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        run_id, started, finished = con.execute(
            "SELECT run_id, started_at, finished_at FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        stages = con.execute("SELECT stage, max(recorded_at) FROM stage_runs WHERE run_id = ? GROUP BY stage "
                             "ORDER BY 2", [run_id]).fetchall()
        fits = con.execute("SELECT stage, created_at FROM artifacts WHERE run_id = ?", [run_id]).fetchall()
        rel = con.execute("SELECT created_at FROM releases WHERE run_id = ?", [run_id]).fetchone()
    finally:
        con.close()
    marks = [("before_flow", started)]
    fit_at = dict(fits)
    for stage, at in stages:
        if stage in fit_at:
            marks.append((f"{stage}_fit", fit_at[stage]))
        marks.append((stage, at))
    if rel:
        marks.append(("release", rel[0]))
    marks.append(("report_catalog", finished))
    return marks


def timeline(lake: Path) -> dict[str, float]:
    """Seconds between the catalog's timestamps of the last run: start -> each stage -> release -> end."""
    marks = timeline_marks(lake)
    out: dict[str, float] = {}
    for (_, prev), (name, at) in zip(marks, marks[1:]):
        out[f"{name if name != 'report_catalog' else 'catalog_finish'}_s"] = (at - prev).total_seconds()
    out["flow_body_s"] = (marks[-1][1] - marks[0][1]).total_seconds()
    return out


def _unix(at: datetime) -> float:
    """A catalog timestamp (naive: UTC, as the catalog writes them) as unix time."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def startup_times(log: Path) -> dict[str, float]:
    """The run command's own start-up timestamps (CURATE_STARTUP_TIMES: seconds since the process
    started; flows/commands/run_startup.py), as ``at_<step>_s``; {} from a curate without them."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("startup-times "):
            return {f"at_{k}_s" if not k.endswith("_s") else k: v for k, v in json.loads(line[14:]).items()}
    return {}


def run(inputs: Path, work: Path, workers: int, threshold: float, keep: bool = False,
        prefect_server: str = "temporary") -> dict:
    """Ingest, then the user path; returns timings, the breakdown and the removed corpus doc_idx.
    ``prefect_server``: ``temporary`` (no ``PREFECT_API_URL``: each ``curate run`` starts Prefect's
    temporary server, a child process counted in the run's CPU seconds) or ``running`` (one real
    ``prefect server start`` before the runs, outside the timed region; the runs report to it and
    its CPU seconds during the run are given apart as ``server_cpu_s``)."""
    work.mkdir(parents=True, exist_ok=True)
    if prefect_server == "running":
        from benchmarks.dedup.prefect_server import running_server
        with running_server(work, _env()) as server:
            return _run(inputs, work, workers, threshold, keep, server)
    return _run(inputs, work, workers, threshold, keep, None)


def _run(inputs: Path, work: Path, workers: int, threshold: float, keep: bool, server: Any) -> dict:
    lake = work / "lake"
    if not keep:
        shutil.rmtree(lake, ignore_errors=True)
    env = _env()
    if server is not None:
        env["PREFECT_API_URL"] = server.url
    curate = [sys.executable, "-m", "flows.cli", "run"]
    (work / "ingest.yaml").write_text(pipeline_yaml(inputs, lake, False, workers, threshold))
    (work / "pipeline.yaml").write_text(pipeline_yaml(inputs, lake, True, workers, threshold))
    ingest_s = _timed([*curate, str(work / "ingest.yaml")], env, work / "ingest.log")
    cpu: list[float] = []
    samples: list[tuple[float, float]] = []
    server_cpu0 = server.cpu_s() if server is not None else 0.0
    run_s = _timed([*curate, str(work / "pipeline.yaml")], env, work / "run.log", cpu, samples)
    server_cpu = server.cpu_s() - server_cpu0 if server is not None else 0.0
    parts = timeline(lake)
    parts.update(phase_cpu([(n, _unix(t)) for n, t in timeline_marks(lake)], samples, cpu[0]))
    parts.update(probes(work, env))
    parts["startup_before_flow_s"] = run_s - parts["flow_body_s"]
    parts.update(startup_times(work / "run.log"))
    return {"ingest_s": ingest_s, "run_s": run_s, "run_cpu_s": cpu[0], "server_cpu_s": server_cpu,
            "prefect_server": "running" if server is not None else "temporary", "breakdown": parts,
            "removed": removed_doc_idx(inputs, lake)}


def removed_doc_idx(inputs: Path, lake: Path):
    """The corpus ``doc_idx`` of the documents the release left out (ids map back through the
    ingest's document-id function)."""
    import duckdb
    import numpy as np
    import polars as pl

    from readers.ingest import document_ids

    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        (path,) = con.execute("SELECT path FROM releases WHERE name = 'dedup' ORDER BY created_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    src = pl.read_parquet(sorted(inputs.glob("*.parquet")), columns=["doc_idx", "id"])
    ids = pl.Series("id", document_ids(SOURCE, src.get_column("id").to_list()), dtype=pl.String)
    kept = pl.scan_parquet(f"{path}/shard-*.parquet").select("id").collect().get_column("id")
    mask = ~ids.is_in(kept.implode()).to_numpy()  # a hash join (np.isin on object arrays took minutes at 200k)
    return np.sort(src.get_column("doc_idx").to_numpy()[mask])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, required=True, help="folder of Parquet files with doc_idx, id, text")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="write the removed doc_idx here (.npy)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--prefect-server", choices=("temporary", "running"), default="temporary",
                    help="temporary: each run starts Prefect's temporary server (the default figure); running: "
                         "one `prefect server start` before the runs, PREFECT_API_URL pointing at it")
    a = ap.parse_args()
    r = run(a.input, a.work, a.workers, a.threshold, prefect_server=a.prefect_server)
    if a.out:
        import numpy as np
        np.save(a.out, r.pop("removed"))
        a.out.with_suffix(".json").write_text(json.dumps(r, indent=1))
    else:
        r.pop("removed")
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
