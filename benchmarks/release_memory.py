"""Peak memory of the release writer on a large lake, this tree against another checkout of curate.

    .venv/bin/python -m benchmarks.release_memory --docs 200000 [--shard-docs 70000] [--peer-code DIR]

Builds (once, under ``--out``) a lake of ``--docs`` documents from the dedup benchmark corpus
(benchmarks/dedup/corpus.py: real sentences of the shared corpora), spread over three sources
in raw shards of ``--shard-docs`` documents (default 20,000; `curate run`'s ingest writes shards
of ~70,000 of these documents in one row group: ``--shard-docs 70000 --row-group-docs 70000`` is the
user path's layout), then runs the release step alone (``build_release``, no
stages, ``select: true``) in a child process per code tree and per mode, polling the peak RSS of
its process tree:

- ``planned``: a UniMax mixture with repeats (max 2 epochs) and a seeded random order, the path
  that stages kept rows and sorts them out of core with DuckDB;
- ``ingest``: kept rows streamed in lake order.

``--peer-code`` is another checkout (e.g. ``git archive main | tar -x -C /tmp/curate-main``); the
ratio printed is this tree's peak over the peer's, on the same lake in the same run.
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

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("alpha", "beta", "gamma")

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from engines.allocators import apply_defaults
apply_defaults()
from schemas.config import PipelineConfig
from warehouse.lake import Lake
from warehouse.release import build_release
lake_root, mode, sources = sys.argv[2], sys.argv[3], sys.argv[4].split(",")
release = {"name": "bench", "select": "true", "shard_rows": 20000, "seed": 1}
planner = None
if mode == "planned":
    from planning.release_plan import make_planner
    release.update(order="shuffle", mixture={"method": "unimax", "max_epochs": 2})
    planner = make_planner(release["mixture"], None, None, 1)
cfg = PipelineConfig.model_validate({"name": "bench", "lake": lake_root, "release": release,
                                     "sources": [{"name": s, "format": "parquet", "paths": ["x"]} for s in sources]})
t = time.perf_counter()
manifest, created = build_release(cfg, Lake(lake_root), [], "bench", "bench", planner=planner)
print(json.dumps({"rows": manifest["totals"]["rows"], "shards": len(manifest["shards"]),
                  "seconds": round(time.perf_counter() - t, 1)}))
"""


def _shard_batches(corpus: Path, shard_docs: int):
    """The corpus in batches of exactly ``shard_docs`` rows (the last one shorter)."""
    buf: list[pa.RecordBatch] = []
    have = 0
    for rb in pq.ParquetFile(corpus).iter_batches(batch_size=10_000, columns=["doc_idx", "text"]):
        buf.append(rb)
        have += rb.num_rows
        if have >= shard_docs:
            t = pa.Table.from_batches(buf)
            yield t.slice(0, shard_docs).combine_chunks().to_batches()[0]
            buf, have = t.slice(shard_docs).to_batches(), have - shard_docs
    if have:
        yield pa.Table.from_batches(buf).combine_chunks().to_batches()[0]


def build_lake(corpus: Path, lake: Path, shard_docs: int = 20_000, row_group_docs: int = 10_000) -> None:
    """Raw shards (DOCUMENT schema) and their ingest markers, round-robin over three sources."""
    from schemas.documents import DOCUMENT
    if (lake / "raw").exists():
        return
    parts: dict[str, list[dict]] = {s: [] for s in SOURCES}
    for k, rb in enumerate(_shard_batches(corpus, shard_docs)):
        src = SOURCES[k % len(SOURCES)]
        idx = rb.column(0).to_numpy()
        m = len(idx)
        table = pa.table({
            "id": pa.array([f"{i:032d}" for i in idx]), "text": rb.column(1).cast(pa.large_string()),
            "source": [src] * m, "url": pa.nulls(m, pa.string()), "domain": pa.nulls(m, pa.string()),
            "lang": pa.nulls(m, pa.string()), "crawl_date": pa.nulls(m, pa.timestamp("us", tz="UTC")),
            "license": pa.nulls(m, pa.string()), "meta": pa.nulls(m, pa.large_string()),
            "ingest_run": ["ing-bench"] * m, "src_file": ["corpus.parquet"] * m, "src_offset": idx,
        }, schema=DOCUMENT)
        path = lake / "raw" / src / "ing-bench" / f"part-00000-{len(parts[src]):03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd", compression_level=1, row_group_size=row_group_docs)
        parts[src].append({"path": str(path), "rows": m, "text_bytes": int(pa.compute.sum(
            pa.compute.binary_length(table.column("text"))).as_py())})
    for src, ps in parts.items():
        done = lake / "raw" / src / "ing-bench" / "_done"
        done.mkdir(parents=True, exist_ok=True)
        n = sum(p["rows"] for p in ps)
        (done / "00000.json").write_text(json.dumps({
            "source": src, "file": "corpus.parquet", "file_index": 0, "fingerprint": src, "ingest_run": "ing-bench",
            "parts": ps, "rows_in": n, "rows_written": n, "rows_quarantined": 0, "bytes_read": 0, "seconds": 0.0,
            "skipped": False, "quarantine_file": None, "ingested_at": "2026-01-01T00:00:00"}))


def measure(code: Path, lake: Path, mode: str, log: Path) -> dict:
    """Run the release step of ``code`` on ``lake`` in a child process; peak RSS of its tree."""
    import psutil
    shutil.rmtree(lake / "releases", ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(code))
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(code), str(lake), mode, ",".join(SOURCES)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=str(code), env=env)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.NoSuchProcess:
                break
            peak = max(peak, rss)
            time.sleep(0.05)
        if proc.wait() != 0:
            raise RuntimeError(f"release step of {code} failed; see {log}")
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return {"peak_rss_mb": round(peak / 2**20), "wall_s": round(time.perf_counter() - t0, 1), **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/release-bench"))
    ap.add_argument("--peer-code", type=Path, help="another checkout of curate to compare with")
    ap.add_argument("--modes", default="planned,ingest")
    ap.add_argument("--shard-docs", type=int, default=20_000, help="documents per raw shard of the lake")
    ap.add_argument("--row-group-docs", type=int, default=10_000,
                    help="documents per row group of a raw shard (`curate run`'s ingest: one per shard)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    corpus = a.out / f"corpus-{a.docs}.parquet"
    if not corpus.exists():
        from benchmarks.dedup.corpus import generate
        generate(corpus, a.docs, 7, 50_000)
    layout = (a.shard_docs, a.row_group_docs)
    lake = a.out / (f"lake-{a.docs}" + (f"-{a.shard_docs}-{a.row_group_docs}" if layout != (20_000, 10_000) else ""))
    build_lake(corpus, lake, *layout)
    trees = {"this tree": REPO} | ({"peer": a.peer_code.resolve()} if a.peer_code else {})
    for mode in a.modes.split(","):
        got = {name: measure(code, lake, mode, a.out / f"{mode}-{name.replace(' ', '_')}.log")
               for name, code in trees.items()}
        for name, r in got.items():
            print(f"{mode:8s} {name:10s} peak RSS {r['peak_rss_mb']:6,d} MB  {r['wall_s']:6.1f} s  "
                  f"{r['rows']:,} rows in {r['shards']} shards")
        if "peer" in got:
            print(f"{mode:8s} ratio (this tree / peer): {got['this tree']['peak_rss_mb'] / got['peer']['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
