"""The local executor against the Ray executor on the same lake, in the same run (issue 13).

Builds a lake of raw shards from the real text in ../shared/corpora (Wikipedia en/fr/es, Python
docs, Gutenberg) repeated up to --docs documents (each repeat is an exact duplicate, so the dedup
stages have real work), then runs the heuristics + exact + MinHash dedup stages through each
executor, one after the other, into lakes of their own:

    gopher_quality, gopher_repetition, fineweb_quality  (per shard)
    exact_dedup       (fit: hash every text; apply: per shard)
    minhash_signatures (per shard), minhash_dedup (fit: LSH + verify; apply: per shard)

Prints, for each stage and in total, the wall seconds and docs/s under both executors and the
ratio Ray / local (the issue's target: <= 1.2 on one machine). The Ray executor starts a private
local Ray with --workers CPUs (its start-up is timed separately and left out of the ratio, as a
cluster is started once for many runs); the local executor uses --workers processes.

    .venv/bin/python benchmarks/executors.py --docs 200000 --workers 2
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
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.executor import LocalExecutor, ShardTask  # noqa: E402
from engines.stage import GlobalStage, StageContext  # noqa: E402
from flows.pipeline import configure_stages  # noqa: E402
from readers.ingest import document_ids  # noqa: E402
from schemas.config import PipelineConfig  # noqa: E402
from schemas.documents import DOCUMENT  # noqa: E402
from warehouse.lake import Lake  # noqa: E402

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))
STAGES = [
    {"name": "gopher", "kind": "gopher_quality"},
    {"name": "gopher_rep", "kind": "gopher_repetition"},
    {"name": "fineweb", "kind": "fineweb_quality"},
    {"name": "dedup", "kind": "exact_dedup"},
    {"name": "minhash", "kind": "minhash_signatures"},
    {"name": "fuzzy", "kind": "minhash_dedup", "params": {"threshold": 0.8}},
]


def build_lake(root: Path, docs: int, shard_docs: int) -> int:
    """Raw shards of ``shard_docs`` documents plus the ingest marker listing them; returns bytes of text."""
    texts: list[str] = []
    for name in ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg"):
        texts += [t for t in pq.read_table(CORPORA / f"{name}.parquet", columns=["text"]).column("text").to_pylist() if t]
    run_dir = root / "raw" / "corpus" / "ing-bench"
    run_dir.mkdir(parents=True)
    parts, total = [], 0
    for k, lo in enumerate(range(0, docs, shard_docs)):
        n = min(shard_docs, docs - lo)
        chunk = [texts[(lo + i) % len(texts)] for i in range(n)]
        keys = [f"doc{lo + i}" for i in range(n)]
        table = pa.Table.from_pydict({
            "id": document_ids("corpus", keys), "text": chunk, "source": ["corpus"] * n, "url": [None] * n,
            "domain": [None] * n, "lang": [None] * n, "crawl_date": [None] * n, "license": ["mixed"] * n,
            "meta": [None] * n, "ingest_run": ["ing-bench"] * n, "src_file": ["/bench/corpus.jsonl"] * n,
            "src_offset": list(range(lo, lo + n))}, schema=DOCUMENT)
        path = run_dir / f"part-00000-{k:04d}.parquet"
        pq.write_table(table, path, compression="zstd", compression_level=1)
        text_bytes = sum(len(t.encode()) for t in chunk)
        total += text_bytes
        parts.append({"path": str(path), "rows": n, "text_bytes": text_bytes})
    (run_dir / "_done").mkdir()
    (run_dir / "_done" / "00000.json").write_text(json.dumps({
        "source": "corpus", "file": "/bench/corpus.jsonl", "file_index": 0, "fingerprint": "fp-bench",
        "ingest_run": "ing-bench", "parts": parts, "rows_in": docs, "rows_written": docs, "rows_quarantined": 0,
        "bytes_read": 0, "seconds": 0.0, "skipped": False, "quarantine_file": None,
        "ingested_at": "2026-01-01T00:00:00"}))
    return total


def run_all(executor: Any, lake: Lake, cfg: PipelineConfig) -> dict[str, float]:
    """The pipeline's stage loop (as flows.pipeline.run_stage wires it), timed per stage."""
    keys: dict[str, str] = {}
    raws = lake.shards_by_age(["corpus"])
    seconds: dict[str, float] = {}
    for cs in configure_stages(cfg):
        t0 = time.perf_counter()
        cs.stage.upstream = {col: f"{keys[up]}:{up_col}" for col, up, up_col in cs.feeds}
        key = cs.stage.key(cs.name)
        feeds = {raw: tuple((col, lake.annotation_path(keys[up], raw), up_col) for col, up, up_col in cs.feeds)
                 for _, raw in raws}
        ctx = StageContext(cache_dir=f"{lake.root}/cache")
        if isinstance(cs.stage, GlobalStage):
            art = lake.artifact_dir(key)
            os.makedirs(art, exist_ok=True)
            executor.fit(cs.stage, [ShardTask(s, r, "", feeds[r]) for s, r in raws], art, ctx)
            ctx.artifact_dir = art
        keys[cs.name] = key
        tasks = [ShardTask(s, r, lake.annotation_path(key, r), feeds[r]) for s, r in raws]
        results = executor.run_stage(cs.name, cs.stage, tasks, ctx)
        failed = [r.error for r in results if r.status != "computed"]
        if failed:
            raise SystemExit(f"stage {cs.name}: {len(failed)} shards not computed: {failed[0]}")
        seconds[cs.name] = time.perf_counter() - t0
    return seconds


def copy_lake(src: Path, dst: Path) -> None:
    shutil.copytree(src / "raw", dst / "raw")
    for m in (dst / "raw").rglob("_done/*.json"):  # markers list absolute shard paths
        m.write_text(m.read_text().replace(str(src), str(dst)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--shard-docs", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=2048)
    ap.add_argument("--keep", action="store_true", help="keep the lakes (default: deleted at the end)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-exec-"))
    try:
        t0 = time.perf_counter()
        nbytes = build_lake(tmp / "local", args.docs, args.shard_docs)
        copy_lake(tmp / "local", tmp / "ray")
        print(f"{args.docs:,} documents ({nbytes / 1e6:.0f} MB of text) in {-(-args.docs // args.shard_docs)} "
              f"shards, built in {time.perf_counter() - t0:.1f} s; {args.workers} workers")
        timings = {}
        for kind in ("local", "ray"):
            lake = Lake(str(tmp / kind))
            cfg = PipelineConfig.model_validate({
                "name": "bench", "lake": lake.root, "sources": [{"name": "corpus", "format": "jsonl", "paths": ["x"]}],
                "stages": STAGES, "release": {"name": "bench", "select": "true"},
                "executor": {"kind": kind, "workers": args.workers, "batch_rows": args.batch_rows}})
            if kind == "local":
                ex: Any = LocalExecutor(cfg.executor, show_progress=False)
            else:
                from engines.ray_executor import RayExecutor
                ex = RayExecutor(cfg.executor, show_progress=False)
                t1 = time.perf_counter()
                ex._connect()  # start-up measured apart: a cluster outlives many runs
                print(f"ray start-up: {time.perf_counter() - t1:.1f} s (not in the ratio)")
            try:
                timings[kind] = run_all(ex, lake, cfg)
            finally:
                ex.close()
        print(f"\n{'stage':<12}{'local s':>9}{'ray s':>9}{'local docs/s':>14}{'ray docs/s':>12}{'ray/local':>11}")
        for name in [s["name"] for s in STAGES] + ["total"]:
            lo = timings["local"].get(name, sum(timings["local"].values()))
            ra = timings["ray"].get(name, sum(timings["ray"].values()))
            print(f"{name:<12}{lo:>9.1f}{ra:>9.1f}{args.docs / lo:>14,.0f}{args.docs / ra:>12,.0f}{ra / lo:>11.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
