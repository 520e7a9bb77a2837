"""Ingest throughput against reading the same files with plain pyarrow / polars.

Builds JSONL and Parquet inputs from the real text in ../shared/corpora (Wikipedia in three
languages, Python docs, Gutenberg), repeated up to --mb megabytes and split into --files files,
then times, on the same files in the same run:

- raw read: pyarrow (``pyarrow.json.read_json`` / ``pyarrow.parquet.read_table``) and polars
  (``read_ndjson`` / ``read_parquet``); the faster of the two is the baseline;
- ours: the ingest stage (read, map columns, ids, meta JSON, write zstd raw shards) through the
  local executor with --workers processes.

Prints MB/s for each and ours / raw as a ratio (the issue's target: >= 0.5).

    .venv/bin/python benchmarks/ingest.py --mb 200 --files 4 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.executor import LocalExecutor  # noqa: E402
from readers.ingest import IngestFileTask, ingest_file  # noqa: E402
from schemas.config import ExecutorConfig, SourceConfig  # noqa: E402

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))


def build_inputs(out: Path, mb: int, files: int) -> tuple[list[Path], list[Path]]:
    rows = []
    for name in ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg"):
        t = pq.read_table(CORPORA / f"{name}.parquet")
        for r in t.to_pylist():
            rows.append({"id": f"{name}/{r.get('url') or r.get('path') or r.get('title')}", "text": r["text"],
                         "url": r.get("url"), "title": r.get("title"), "corpus": name})
    base = sum(len(r["text"].encode()) for r in rows)
    reps = max(1, int(mb * 1e6 / base + 0.999))
    per_file = (len(rows) * reps + files - 1) // files
    jsonl, parquet = [], []
    it = ((rep, r) for rep in range(reps) for r in rows)
    for f in range(files):
        chunk = []
        for _ in range(per_file):
            try:
                rep, r = next(it)
            except StopIteration:
                break
            chunk.append({**r, "id": f"{r['id']}#{rep}"})
        jp = out / f"part{f}.jsonl"
        with open(jp, "w", encoding="utf-8") as fh:
            for r in chunk:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        pp = out / f"part{f}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk), pp, compression="zstd")
        jsonl.append(jp)
        parquet.append(pp)
    return jsonl, parquet


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours(paths: list[Path], fmt: str, workers: int, lake: Path) -> float:
    if lake.exists():
        shutil.rmtree(lake)
    src = SourceConfig(name="bench", format=fmt, paths=[str(p) for p in paths],
                       columns={"text": "text", "id": "id", "url": "url"})
    tasks = [IngestFileTask(src, str(p), i, str(lake / "raw"), str(lake / "q"), "ing-bench", "run", 128 << 20)
             for i, p in enumerate(paths)]
    with LocalExecutor(ExecutorConfig(workers=workers), show_progress=False) as ex:
        if workers > 1:  # start the pool outside the timing: it is started once per run, not per file
            list(ex.map(os.getpid, [0] * workers))
        t0 = time.perf_counter()
        results = list(ex.map(ingest_file, tasks))
        dt = time.perf_counter() - t0
    assert all(r.rows_quarantined == 0 for r in results)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="approximate input size in MB of text")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="take the best of N timings")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-ingest-"))
    try:
        jsonl, parquet = build_inputs(tmp, args.mb, args.files)
        print(f"inputs: {args.files} files, JSONL {sum(p.stat().st_size for p in jsonl) / 1e6:.0f} MB, "
              f"Parquet {sum(p.stat().st_size for p in parquet) / 1e6:.0f} MB (real text, repeated)")
        text_mb = sum(p.stat().st_size for p in jsonl) / 1e6  # MB/s measured on the JSONL size for both
        rows = [("format", "reader", "seconds", "MB/s")]
        ratios = {}
        for fmt, paths, raw_fns in (
            ("jsonl", jsonl, {"pyarrow": lambda: [pj.read_json(p) for p in jsonl],
                              "polars": lambda: [pl.read_ndjson(p) for p in jsonl]}),
            ("parquet", parquet, {"pyarrow": lambda: [pq.read_table(p) for p in parquet],
                                  "polars": lambda: [pl.read_parquet(p) for p in parquet]}),
        ):
            best_raw = None
            for name, fn in raw_fns.items():
                t = min(timed(fn) for _ in range(args.repeat))
                rows.append((fmt, f"raw {name}", f"{t:.2f}", f"{text_mb / t:.0f}"))
                best_raw = t if best_raw is None else min(best_raw, t)
            t = min(ours(paths, fmt, args.workers, tmp / "lake") for _ in range(args.repeat))
            rows.append((fmt, f"curate ingest ({args.workers} workers)", f"{t:.2f}", f"{text_mb / t:.0f}"))
            ratios[fmt] = best_raw / t
        w = [max(len(str(r[i])) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
        for fmt, r in ratios.items():
            print(f"{fmt}: curate ingest runs at {r:.2f}x the raw read speed (target >= 0.50)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
