"""This project's MinHash dedup on a lake of raw shards, as the flow runs it: the
``minhash_signatures`` stage over every shard (process pool), the ``minhash_dedup`` fit (one
process), then its per-shard apply (process pool). Writes the ``doc_idx`` of removed documents.

    .venv/bin/python -m benchmarks.dedup.run_curate --lake /tmp/dedup-bench/lake-200k --out removed.npy

Raw shard ids are the corpus ``doc_idx`` as text (benchmarks/dedup/run.py writes the lake), so
the result maps back to the corpus. Annotations and artifacts go to a fresh folder under the lake
each run unless ``--keep`` is given (then a second run skips what exists, as a nightly run does).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engines.allocators import apply_defaults  # noqa: E402  (as the curate CLI does, before Polars loads)

apply_defaults()

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from engines.executor import LocalExecutor, ShardTask  # noqa: E402
from engines.stage import StageContext  # noqa: E402
from filters.minhash.dedup import MinHashDedup  # noqa: E402
from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashSignatures  # noqa: E402
from schemas.config import ExecutorConfig  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process, all threads (workers=1 runs every stage here)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(lake: Path, workers: int, threshold: float, verify: bool, keep: bool, batch_rows: int) -> dict:
    raw = sorted(str(p) for p in (lake / "raw").rglob("*.parquet"))
    work = lake / "work"
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    sig = MinHashSignatures({"ngram": 5, "num_perm": 112, "bands": 14, "rows": 8})
    ded = MinHashDedup({"threshold": threshold, "verify": verify, "survivor": "first"})
    k1 = sig.key("minhash_signatures")
    t0, c0 = time.perf_counter(), _cpu()
    timings = {}
    with LocalExecutor(ExecutorConfig(workers=workers, batch_rows=batch_rows), show_progress=False) as ex:
        t1 = [ShardTask("bench", p, str(work / k1 / Path(p).name)) for p in raw]
        res = ex.run_stage("minhash_signatures", sig, t1)
        failed = [r.error for r in res if r.status == "failed"]
        if failed:
            raise RuntimeError(failed[0])
        timings["signatures_s"], timings["signatures_cpu_s"] = time.perf_counter() - t0, _cpu() - c0
        cols = (BANDS_COLUMN, COUNT_COLUMN)
        inputs = {p: tuple((c, str(work / k1 / Path(p).name), c) for c in cols) for p in raw}
        ded.upstream = {c: k1 for c in cols}
        k2 = ded.key("minhash_dedup")
        t2 = [ShardTask("bench", p, str(work / k2 / Path(p).name), inputs[p]) for p in raw]
        art = work / f"{k2}-artifact"
        t, c = time.perf_counter(), _cpu()
        if not (art / "assignment.parquet").exists():
            shutil.rmtree(art, ignore_errors=True)
            art.mkdir(parents=True)
            metrics = ex.fit(ded, t2, str(art))
            (art / "_fit.json").write_text(json.dumps(metrics, default=str))
        else:
            metrics = json.loads((art / "_fit.json").read_text())
        timings["fit_s"], timings["fit_cpu_s"] = time.perf_counter() - t, _cpu() - c
        t, c = time.perf_counter(), _cpu()
        res = ex.run_stage("minhash_dedup", ded, t2, StageContext(artifact_dir=str(art)))
        failed = [r.error for r in res if r.status == "failed"]
        if failed:
            raise RuntimeError(failed[0])
        timings["apply_s"], timings["apply_cpu_s"] = time.perf_counter() - t, _cpu() - c
    timings["total_s"] = time.perf_counter() - t0
    removed = (pl.scan_parquet([t.out_path for t in t2]).filter(~pl.col("keep")).select(pl.col("id").cast(pl.Int64))
               .collect().get_column("id").to_numpy())
    return {"removed": removed, "metrics": metrics, "timings": timings}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", type=Path, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--batch-rows", type=int, default=4096)
    a = ap.parse_args()
    r = run(a.lake, a.workers, a.threshold, not a.no_verify, a.keep, a.batch_rows)
    np.save(a.out, np.sort(r["removed"]))
    Path(a.out).with_suffix(".json").write_text(json.dumps({"metrics": r["metrics"], "timings": r["timings"]},
                                                           default=str, indent=1))
    print(json.dumps(r["timings"]))


if __name__ == "__main__":
    main()
