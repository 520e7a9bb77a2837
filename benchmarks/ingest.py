"""Ingest throughput against datatrove (the peer) and against reading the same files with plain pyarrow / polars.

Builds JSONL and Parquet inputs from the real text in ../shared/corpora (Wikipedia in three
languages, Python docs, Gutenberg), repeated up to --mb megabytes and split into --files files,
then times, on the same files in the same run:

- raw read: pyarrow (``pyarrow.json.read_json`` / ``pyarrow.parquet.read_table``) and polars
  (``read_ndjson`` / ``read_parquet``); the faster of the two is the baseline;
- floor: read + write the same rows as zstd Parquet with the lake's writer settings and row-group
  size (``floor()``), --workers files at a time in threads (pyarrow releases the GIL): no ingest
  can beat this, since text is read and written once;
- peer: datatrove's ``JsonlReader`` / ``ParquetReader`` into its ``ParquetWriter`` with the same
  compression (zstd; datatrove's other writer defaults), one task per file on --workers processes
  (``LocalPipelineExecutor``): what a datatrove user runs to turn the same files into Parquet;
- ours: the ingest stage (read, map columns, ids, meta JSON, write zstd raw shards) through the
  local executor with --workers processes.

Prints wall seconds and MB/s for each and ours / datatrove (target >= 3), ours / floor (target >= 0.8)
and ours / raw read; and, for the floor, datatrove and ours, the CPU seconds of the same work in one
process, files one after another (a ratio that other load on a shared machine disturbs less).

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

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from engines import storage  # noqa: E402
from engines.executor import LocalExecutor  # noqa: E402
from readers.ingest import ROW_GROUP_ROWS, IngestFileTask, ingest_file  # noqa: E402
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


def floor(paths: list[Path], read, out: Path, workers: int) -> None:
    """Read each file and write its rows as the lake writes text: the lake's writer (zstd level 1,
    statistics, page checksums), the text column a large string (so, as in the lake, not
    dictionary-encoded) and row groups of ROW_GROUP_ROWS rows. Until session 6 the floor wrote
    one row group per file and tried a dictionary on the text (the write took 0.43 CPU s for 120 MB
    of JSONL then, 0.44 now)."""
    out.mkdir(exist_ok=True)

    def one(i_p):
        i, p = i_p
        t = read(p)
        k = t.schema.get_field_index("text")
        t = t.set_column(k, "text", t.column(k).cast(pa.large_string()))
        w = storage.parquet_writer(str(out / f"{i}.parquet"), t.schema)
        w.write_table(t, row_group_size=ROW_GROUP_ROWS)
        w.close()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, enumerate(paths)))


def datatrove(paths: list[Path], fmt: str, workers: int, out: Path) -> None:
    """datatrove's reader -> ParquetWriter(zstd) over the same files, one task per file."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader, ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    shutil.rmtree(out, ignore_errors=True)
    folder = str(paths[0].parent)
    reader = (JsonlReader(folder, glob_pattern="*.jsonl", text_key="text", id_key="id") if fmt == "jsonl"
              else ParquetReader(folder, glob_pattern="*.parquet", text_key="text", id_key="id"))
    # An explicit schema, as datatrove's docs advise for fields that may be null (title is, on some rows).
    meta = pa.struct([(k, pa.string()) for k in ("url", "title", "corpus", "file_path")])
    schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("metadata", meta)])
    LocalPipelineExecutor(pipeline=[reader, ParquetWriter(str(out / "data"), compression="zstd", schema=schema)],
                          tasks=len(paths), workers=workers, logging_dir=str(out / "logs")).run()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _warm(fmt: str) -> int:
    from readers.formats import get_reader
    get_reader(fmt)
    # pyarrow imports pandas (where installed) on a process's first pa.array() call: 0.6 CPU s, paid
    # once per worker process (any stage pays it too), so it belongs to the pool's start, not to a file.
    pa.array([0])
    time.sleep(0.2)  # keep this worker busy so the other one gets a warm-up call too
    return os.getpid()


def ours(paths: list[Path], fmt: str, workers: int, lake: Path) -> float:
    if lake.exists():
        shutil.rmtree(lake)
    src = SourceConfig(name="bench", format=fmt, paths=[str(p) for p in paths],
                       columns={"text": "text", "id": "id", "url": "url"})
    tasks = [IngestFileTask(src, str(p), i, str(lake / "raw"), str(lake / "q"), "ing-bench", "run", 128 << 20)
             for i, p in enumerate(paths)]
    with LocalExecutor(ExecutorConfig(workers=workers), show_progress=False) as ex:
        if workers > 1:  # start the pool and import the reader outside the timing: once per run, not per file
            # Until every worker has run a warm-up call: a worker still starting (spawn, imports: about
            # 1.4 CPU s) would otherwise be timed, and one started worker can take every warm-up call.
            warmed: set[int] = set()
            while len(warmed) < workers:
                warmed.update(ex.map(_warm, [fmt] * workers))
        t0 = time.perf_counter()
        results = list(ex.map(ingest_file, tasks))
        dt = time.perf_counter() - t0
    assert all(r.rows_quarantined == 0 for r in results)
    return dt


def cpu_seconds(fn) -> float:
    """CPU seconds of this process (all its threads) while fn runs: less sensitive than wall time
    to other work on a shared machine."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def ours_in_process(paths: list[Path], fmt: str, lake: Path) -> None:
    """The ingest stage on each file, one after another, in this process."""
    shutil.rmtree(lake, ignore_errors=True)
    src = SourceConfig(name="bench", format=fmt, paths=[str(p) for p in paths],
                       columns={"text": "text", "id": "id", "url": "url"})
    for i, p in enumerate(paths):
        res = ingest_file(IngestFileTask(src, str(p), i, str(lake / "raw"), str(lake / "q"), "ing-bench", "run",
                                         128 << 20))
        assert res.rows_quarantined == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="approximate input size in MB of text")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="take the best of N timings")
    args = ap.parse_args()
    from loguru import logger  # datatrove's logger: its per-step INFO lines would bury the table

    logger.remove()
    from engines.native import cpu_info
    cpu = cpu_info()
    import readers.jsonl
    kernels = getattr(readers.jsonl, "kernels", None)  # absent in the code before session 6 (a base checkout)
    if kernels is None:
        paths = "none (code without readers/kernels.py)"
    elif kernels.ext() is None:
        paths = f"none (NumPy line index, Arrow UTF-8, Polars hosts and meta), ids by {kernels.hash_path()}"
    else:
        mod = kernels.ext()
        utf8 = f", UTF-8 check ({mod.path()})" if hasattr(mod, "utf8_valid") else ""  # session 7 on
        more = ", URL hosts and string meta JSON in C" if hasattr(mod, "json_strings") else ""
        paths = f"line scan (memchr){utf8}{more}, ids by {kernels.hash_path()}"
    print(f"CPU: {cpu['model']} (SIMD flags: {' '.join(cpu['simd_flags']) or '-'}); ingest kernels: {paths}; "
          f"load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-ingest-"))
    try:
        jsonl, parquet = build_inputs(tmp, args.mb, args.files)
        print(f"inputs: {args.files} files, JSONL {sum(p.stat().st_size for p in jsonl) / 1e6:.0f} MB, "
              f"Parquet {sum(p.stat().st_size for p in parquet) / 1e6:.0f} MB (real text, repeated)")
        text_mb = sum(p.stat().st_size for p in jsonl) / 1e6  # MB/s measured on the JSONL size for both
        rows = [("format", "reader", "wall s", "MB/s", "CPU s, 1 process")]
        ratios = {}
        for fmt, paths, raw_fns in (
            ("jsonl", jsonl, {"pyarrow": lambda: [pj.read_json(p) for p in jsonl],
                              "polars": lambda: [pl.read_ndjson(p) for p in jsonl]}),
            ("parquet", parquet, {"pyarrow": lambda: [pq.read_table(p) for p in parquet],
                                  "polars": lambda: [pl.read_parquet(p) for p in parquet]}),
        ):
            # CPU seconds in one process, the three interleaved round by round (the best round of each
            # is kept), so a burst of other load hits all three alike.
            cpu: dict[str, list[float]] = {"floor": [], "peer": [], "ours": []}
            reader = pj.read_json if fmt == "jsonl" else pq.read_table
            for _ in range(max(args.repeat, 3)):
                cpu["floor"].append(cpu_seconds(lambda p=paths, r=reader: floor(p, r, tmp / "floor", 1)))
                cpu["peer"].append(cpu_seconds(lambda p=paths, f=fmt: datatrove(p, f, 1, tmp / "datatrove")))
                cpu["ours"].append(cpu_seconds(lambda p=paths, f=fmt: ours_in_process(p, f, tmp / "lake")))
            c_floor, c_peer, c = min(cpu["floor"]), min(cpu["peer"]), min(cpu["ours"])
            best_raw = None
            for name, fn in raw_fns.items():
                t = min(timed(fn) for _ in range(args.repeat))
                rows.append((fmt, f"raw {name}", f"{t:.2f}", f"{text_mb / t:.0f}", ""))
                best_raw = t if best_raw is None else min(best_raw, t)
            t_floor = min(timed(lambda p=paths, r=reader: floor(p, r, tmp / "floor", args.workers))
                          for _ in range(args.repeat))
            rows.append((fmt, f"floor: pyarrow read + zstd write ({args.workers} threads)", f"{t_floor:.2f}",
                         f"{text_mb / t_floor:.0f}", f"{c_floor:.2f}"))
            t_peer = min(timed(lambda p=paths, f=fmt: datatrove(p, f, args.workers, tmp / "datatrove"))
                         for _ in range(args.repeat))
            rows.append((fmt, f"datatrove reader -> ParquetWriter(zstd) ({args.workers} workers)", f"{t_peer:.2f}",
                         f"{text_mb / t_peer:.0f}", f"{c_peer:.2f}"))
            t = min(ours(paths, fmt, args.workers, tmp / "lake") for _ in range(args.repeat))
            rows.append((fmt, f"curate ingest ({args.workers} workers)", f"{t:.2f}", f"{text_mb / t:.0f}", f"{c:.2f}"))
            ratios[fmt] = (best_raw / t, t_floor / t, t_peer / t, c_floor / c, c_peer / c)
        w = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
        for fmt, (r, f, d, cf, cd) in ratios.items():
            print(f"{fmt}: curate ingest runs at {d:.2f}x datatrove (target >= 3), {f:.2f}x the read+write floor "
                  f"(target >= 0.8) and {r:.2f}x the raw read speed (wall clock); on CPU seconds in one process "
                  f"{cd:.2f}x datatrove and {cf:.2f}x the floor")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
