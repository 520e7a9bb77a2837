"""Near-duplicate detection, side by side: this project against text-dedup, datatrove's four-step
MinHash and a plain datasketch MinHashLSH, on the same real-text corpus with planted families.

Every tool gets word 5-grams and 112 permutations as 14 bands x 8 rows, keeps the first document
of each cluster, and runs as its own process tree on the same input; the driver polls the tree
every 50 ms for the peak of the summed RSS (and PSS, which splits shared pages fairly) and the
wall time. Quality is scored against exact Jaccard (benchmarks/dedup/truth.py) at --threshold:

- true clusters: connected components of the graph of pairs at exact Jaccard >= threshold; a
  cluster C calls for |C| - 1 removals (any members), a lone document for none;
- precision: correct removals / removals, with min(removed in C, |C| - 1) correct in each C (a
  removed document with no partner at or above the threshold, or the last copy, is wrong);
- recall: correct removals / sum(|C| - 1);
- leftover: true clusters that still have two or more documents kept.

This project runs as the flow does (benchmarks/dedup/run_curate.py: the signature stage over every
raw shard, the dedup fit, the per-shard apply) with ``executor.workers: 1`` (one process; the
signature kernel runs one thread per core), from a lake of raw shards written before the clock
starts (ingest is not dedup; the peers read the same text from Parquet files), with the allocator
settings the ``curate`` CLI applies (engines/allocators.py). Two rows: ``curate`` (default
``batch_rows``, 4096) and ``curate-lean`` (``batch_rows: 1024``).

Peers live in their own virtualenv (see docs/dedup.md for the pip specs)::

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install "datatrove[processing]" text-dedup datasketch spacy orjson

    .venv/bin/python -m benchmarks.dedup.run --docs 200000
    .venv/bin/python -m benchmarks.dedup.run --docs 2000000 --tools curate --no-truth   # scale run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.dedup.corpus import generate  # noqa: E402
from benchmarks.dedup.truth import compute_truth, score  # noqa: E402
from engines import native  # noqa: E402
from schemas.documents import DOCUMENT  # noqa: E402

TOOLS = ("curate", "curate-lean", "curate-run", "datasketch", "text-dedup", "datatrove")


def measure(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd``; wall time, CPU time (user + system, all its processes and threads: the measure
    that holds on a machine shared with other work) and the peak summed RSS / PSS of its tree."""
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        root = psutil.Process(proc.pid)
        peak_rss = peak_pss = 0
        polls = 0
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = pss = 0
            for p in procs:
                try:
                    if polls % 4 == 0:
                        full = p.memory_full_info()
                        rss += full.rss
                        pss += full.pss
                    else:
                        rss += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak_rss = max(peak_rss, rss)
            if polls % 4 == 0:
                peak_pss = max(peak_pss, pss)
            polls += 1
            time.sleep(0.05)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"{cmd[:3]} failed with exit code {rc}; see {log}")
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss / 2**20, "peak_pss_mb": peak_pss / 2**20}


def prepare_inputs(corpus: Path, peer_dir: Path | None, lake: Path, shard_docs: int, peer_files: int) -> None:
    """Peer input (``peer_files`` Parquet files: doc_idx, id, text) and a lake of raw shards."""
    pf = pq.ParquetFile(corpus)
    n = pf.metadata.num_rows
    if peer_dir is not None and not peer_dir.exists():
        tmp = peer_dir.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        per = (n + peer_files - 1) // peer_files
        writers: dict[int, pq.ParquetWriter] = {}
        for rb in pf.iter_batches(batch_size=10_000, columns=["doc_idx", "text"]):
            idx = rb.column(0).to_numpy()
            t = pa.table({"doc_idx": idx, "id": pa.array([str(i) for i in idx]), "text": rb.column(1)})
            for f in np.unique(idx // per):
                sel = t.filter(pa.array(idx // per == f))
                w = writers.get(int(f)) or writers.setdefault(int(f), pq.ParquetWriter(tmp / f"part-{f:03d}.parquet",
                                                                                     sel.schema, compression="zstd"))
                w.write_table(sel)
        for w in writers.values():
            w.close()
        tmp.rename(peer_dir)
    raw = lake / "raw" / "bench" / "ing-bench"
    if not raw.exists():
        tmp = raw.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shard = 0
        buf: list[pa.RecordBatch] = []
        rows = 0

        def flush() -> None:
            nonlocal shard, buf, rows
            if not rows:
                return
            t = pa.Table.from_batches(buf)
            idx = t.column("doc_idx").to_numpy()
            m = len(idx)
            table = pa.table({
                "id": pa.array([str(i) for i in idx]), "text": t.column("text").cast(pa.large_string()),
                "source": ["bench"] * m, "url": pa.nulls(m, pa.string()), "domain": pa.nulls(m, pa.string()),
                "lang": pa.nulls(m, pa.string()), "crawl_date": pa.nulls(m, pa.timestamp("us", tz="UTC")),
                "license": pa.nulls(m, pa.string()), "meta": pa.nulls(m, pa.large_string()),
                "ingest_run": ["ing-bench"] * m, "src_file": ["corpus.parquet"] * m, "src_offset": idx,
            }, schema=DOCUMENT)
            # Row groups of 10k documents, like the peers' input files, so a reader streams a shard.
            pq.write_table(table, tmp / f"part-{shard:05d}.parquet", compression="zstd", compression_level=1,
                           row_group_size=10_000)
            shard += 1
            buf, rows = [], 0

        for rb in pf.iter_batches(batch_size=10_000, columns=["doc_idx", "text"]):
            buf.append(rb)
            rows += rb.num_rows
            if rows >= shard_docs:
                flush()
        flush()
        tmp.rename(raw)


def run_tool(tool: str, a: argparse.Namespace, peer_dir: Path, lake: Path, work: Path) -> tuple[dict, np.ndarray]:
    out = work / f"removed-{tool}.npy"
    bench_py = a.bench_python
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if tool == "curate-run":  # the user path: `curate run` on a pipeline file (benchmarks/dedup/user_path.py)
        cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "benchmarks.dedup.user_path", "--input", str(peer_dir),
               "--work", str(work / "user-path"), "--out", str(out), "--threshold", str(a.threshold),
               "--workers", str(a.curate_workers), "--prefect-server", a.prefect_server]
        m = measure(cmd, work / f"{tool}.log", env)
        info = json.loads(out.with_suffix(".json").read_text())
        # the figure is the second `curate run` (ingest measured on its own, before it)
        m.update({"wall_s": info["run_s"], "ingest_s": info["ingest_s"], "breakdown": info["breakdown"],
                  "cpu_s": info.get("run_cpu_s", m["cpu_s"]), "prefect_server": info.get("prefect_server"),
                  "server_cpu_s": info.get("server_cpu_s", 0.0)})
        return m, np.load(out)
    if tool in ("curate", "curate-lean"):
        cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "benchmarks.dedup.run_curate", "--lake", str(lake),
               "--out", str(out), "--workers", str(a.curate_workers), "--threshold", str(a.threshold)]
        if tool == "curate-lean":  # smaller batches (docs/dedup.md, memory model)
            cmd += ["--batch-rows", "1024"]
    elif tool == "datasketch":
        cmd = [bench_py, str(REPO / "benchmarks/dedup/peers.py"), "datasketch", "--input", str(peer_dir), "--out", str(out)]
    elif tool == "datatrove":
        cmd = [bench_py, str(REPO / "benchmarks/dedup/peers.py"), "datatrove", "--input", str(peer_dir), "--out", str(out),
               "--work", str(work / "datatrove"), "--workers", str(a.workers)]
    elif tool == "text-dedup":
        td = work / "text-dedup"
        shutil.rmtree(td, ignore_errors=True)
        cmd = [bench_py, "-m", "text_dedup.minhash", "--path", "parquet", "--data_files", str(peer_dir / "*.parquet"),
               "--split", "train", "--cache_dir", str(td / "cache"), "--output", str(td / "out"), "--column", "text",
               "--ngram", "5", "--num_perm", "112", "--b", "14", "--r", "8", "--threshold", str(a.threshold),
               "--hash_func", "xxh3", "--num_proc", str(a.workers)]
    else:
        raise ValueError(tool)
    m = measure(cmd, work / f"{tool}.log", env)
    if tool == "text-dedup":
        kept = pl.concat([pl.from_arrow(pa.ipc.open_stream(f).read_all().select(["doc_idx"]))
                          for f in sorted((work / "text-dedup" / "out").glob("*.arrow"))])
        n = pq.ParquetFile(a.corpus_path).metadata.num_rows
        mask = np.ones(n, dtype=bool)
        mask[kept.get_column("doc_idx").to_numpy()] = False
        removed = np.flatnonzero(mask)
        shutil.rmtree(work / "text-dedup", ignore_errors=True)
    else:
        removed = np.load(out)
    return m, removed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--out", type=Path, default=Path("/tmp/dedup-bench"))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--curate-workers", type=int, default=1,
                    help="executor workers for this project (1: one process; the kernel uses a thread per core)")
    ap.add_argument("--shard-docs", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-truth", action="store_true", help="skip ground truth (scale runs)")
    ap.add_argument("--bench-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--prefect-server", choices=("temporary", "running"), default="temporary",
                    help="curate-run: each run starts Prefect's temporary server (default), or one real "
                         "`prefect server start` runs before the timed run and PREFECT_API_URL points at it "
                         "(its CPU seconds during the run are printed as server_cpu_s)")
    a = ap.parse_args()
    # the figures depend on the CPU, its load and the kernel path (CURATE_SIMD is inherited by the runs)
    print(native.describe(), flush=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    tag = f"{a.docs // 1000}k-s{a.seed}"
    a.corpus_path = a.out / f"corpus-{tag}.parquet"
    if not a.corpus_path.exists():
        print("generating corpus ...", flush=True)
        print(generate(a.corpus_path, a.docs, a.seed))
    truth_path = a.out / f"truth-{tag}-t{a.threshold:g}.parquet"
    if not a.no_truth and not truth_path.exists():
        print("computing ground truth ...", flush=True)
        stats = compute_truth(a.corpus_path, truth_path, a.threshold)
        truth_path.with_suffix(".json").write_text(json.dumps(stats))
    if not a.no_truth:
        print("truth:", truth_path.with_suffix(".json").read_text(), flush=True)
    peer_dir, lake = a.out / f"input-{tag}", a.out / f"lake-{tag}"
    peers_needed = any(not t.startswith("curate") or t == "curate-run" for t in a.tools.split(","))
    prepare_inputs(a.corpus_path, peer_dir if peers_needed else None, lake, a.shard_docs, a.workers)
    truth = None if a.no_truth else pl.read_parquet(truth_path)
    work = a.out / f"work-{tag}"
    work.mkdir(exist_ok=True)
    rows = []
    for tool in a.tools.split(","):
        print(f"running {tool} ...", flush=True)
        m, removed = run_tool(tool, a, peer_dir, lake, work)
        q = score(truth, removed) if truth is not None else {"removed": len(removed)}
        row = {"tool": tool, "docs": a.docs, "docs_per_s": a.docs / m["wall_s"], **m, **q}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if "breakdown" in m:
            if m.get("prefect_server") == "running":
                print(f"  curate-run reported to a running Prefect server (started before, not timed): the run "
                      f"{m['cpu_s']:.1f} CPU s + the server {m['server_cpu_s']:.1f} CPU s during it", flush=True)
            wall = {k: v for k, v in m["breakdown"].items() if not k.endswith("_cpu_s")}
            cpu = {k[:-6]: v for k, v in m["breakdown"].items() if k.endswith("_cpu_s")}
            print(f"  curate-run: ingest {m['ingest_s']:.1f} s (not counted); the run: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in wall.items()), flush=True)
            if cpu:
                print("  curate-run CPU s per phase (its process tree, sampled): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()), flush=True)
    results = a.out / f"results-{tag}-t{a.threshold:g}.json"
    results.write_text(json.dumps(rows, indent=1))
    print_table(rows)
    print(f"\n{native.describe()}; load average at the end "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


def print_table(rows: list[dict]) -> None:
    head = ("| tool | docs/s | wall s | CPU s | peak RSS MB (sum) | peak PSS MB | removed | precision | recall | "
            "leftover clusters |")
    print(head)
    print("|---" * 10 + "|")
    for r in rows:
        print(f"| {r['tool']} | {r['docs_per_s']:,.0f} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_pss_mb']:.0f} | {r['removed']:,} | "
              f"{r.get('precision', float('nan')):.4f} | {r.get('recall', float('nan')):.4f} | "
              f"{r.get('leftover_clusters', '-')} |")
    peers = [r for r in rows if not r["tool"].startswith("curate")]
    if not peers:
        return
    fastest = max(peers, key=lambda r: r["docs_per_s"])
    least_cpu = min(peers, key=lambda r: r.get("cpu_s", float("inf")))
    for tool in ("curate", "curate-run"):
        ours = [r for r in rows if r["tool"] == tool]
        if ours:
            o = ours[0]
            print(f"\n{tool} / fastest peer ({fastest['tool']}): {o['docs_per_s'] / fastest['docs_per_s']:.1f}x docs/s "
                  f"(wall clock); CPU time: {least_cpu.get('cpu_s', float('nan')) / o.get('cpu_s', float('nan')):.1f}x "
                  f"less than the peer using the least ({least_cpu['tool']})")


if __name__ == "__main__":
    main()
