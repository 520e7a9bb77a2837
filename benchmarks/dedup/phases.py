"""Where MinHash dedup time goes, phase by phase, in CPU seconds of one thread (robust on a shared
machine), on the benchmark's lake of raw shards:

- ``read``: the raw shards' text column (Parquet decode)
- ``buffers``: the Polars text column as the Arrow buffers the kernel reads (a copy of every byte:
  Polars holds strings as views)
- ``normalise (fallback)``: Unicode lower-casing by Polars and its buffers: what the NumPy path
  does before hashing; the compiled kernel lower-cases as it hashes instead (session 7)
- ``words+shingles``: word hashes (UTF-8 decode, lower-casing, separators, FNV-1a) and shingle
  hashes, from the raw text as the stage runs the kernel
- ``distinct``: + the distinct shingles of each document (hash set; what a signature needs)
- ``minhash+bands``: + the 112 permutations and the 14 band keys (the signature kernel, whole)
- ``verify sets``: the fit's re-derivation of each document's sorted bottom-k shingle set
- ``floor``: one pass of FNV-1a over every byte of the lower-cased text (hashing each byte once,
  serially: what no word-shingle MinHash can avoid); the kernel's distance to it is reported

The fit's later phases (candidate pairs, verification, union-find, survivors) come from the fit's
own CPU-time metrics (``cpu_seconds``) in ``run_curate``'s JSON output.

With ``--fit``: the ``minhash_dedup`` fit alone, as the local executor runs it (``fit_two_pass``;
the signatures are computed once into ``<lake>/work``), on one thread (``threads: 1``: kernels and
the fit's own steps) and on every core the executor grants (``threads: 0``), alternating, wall and
process CPU seconds per run and the fit's own step timings (``scan_s``, ``candidates_s``...), the
wall-clock ratio, and whether the artifact files (sha256 of each) are the same on both. Both modes
run with the curate CLI's allocator settings (``engines.allocators.apply_defaults``), as
``run_curate`` does: they move the fit's CPU seconds by a third on the AMD EPYC (docs/dedup.md,
session 9).

    .venv/bin/python -m benchmarks.dedup.phases --lake /tmp/dedup-bench/lake-200k-s7
    CURATE_SIMD=avx2 .venv/bin/python -m benchmarks.dedup.phases --lake ...
    .venv/bin/python -m benchmarks.dedup.phases --lake /tmp/dedup-bench/lake-200k-s7 --fit --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engines.allocators import apply_defaults  # noqa: E402  (as the curate CLI does, before Polars loads)

apply_defaults()

import polars as pl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from engines import native  # noqa: E402
from filters.minhash import kernels as k  # noqa: E402
from filters.minhash.signatures import MinHashParams, SignatureComputer, normalised_text, string_buffers  # noqa: E402


def cpu(fn, repeats: int = 3, clock=time.thread_time) -> float:
    """Best CPU seconds of ``fn()`` over ``repeats`` runs (this thread's, or ``clock``'s)."""
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def measure(lake: Path, limit: int | None, repeats: int) -> dict[str, float]:
    files = sorted((lake / "raw").rglob("*.parquet"))
    texts = [pq.read_table(f, columns=["text"]).column("text") for f in files]
    n = sum(len(t) for t in texts)
    if limit:
        n = min(n, limit)
    comp = SignatureComputer(MinHashParams(threads=1))
    a, b = comp.a, comp.b
    batches: list[pl.Series] = []
    for t in texts:
        s = pl.from_arrow(t)
        assert isinstance(s, pl.Series)
        for off in range(0, len(s), 4096):
            batches.append(s.slice(off, 4096))
    if limit:
        kept, total = [], 0
        for s in batches:
            if total >= limit:
                break
            kept.append(s.head(limit - total))
            total += len(kept[-1])
        batches = kept
    lowered = [string_buffers(s.to_frame("t").select(normalised_text(pl.col("t"))).to_series()) for s in batches]
    byts = int(sum(o[-1] - o[0] for _, o in lowered))
    # What the stage hands the compiled kernel: the raw text, lower-cased inside the word hasher.
    lower = k.lowers_in_kernel()
    raw = [string_buffers(s) for s in batches] if lower else lowered

    def read() -> None:
        for f in files:
            pq.read_table(f, columns=["text"], use_threads=False)

    def buffers() -> None:
        for s in batches:
            string_buffers(s)

    def normalise() -> None:
        for s in batches:
            string_buffers(s.to_frame("t").select(normalised_text(pl.col("t"))).to_series())

    def words() -> None:
        for d, o in raw:
            k.shingle_hashes_kernel(d, o, 5, False, k.SEP_LO, k.SEP_HI, lower)

    def distinct() -> None:
        for d, o in raw:
            k.signatures_kernel(d, o, 5, False, a[:0], b[:0], 0, 0, 0, k.SEP_LO, k.SEP_HI, lower)

    def signature() -> None:
        for d, o in raw:
            k.signatures_kernel(d, o, 5, False, a, b, 14, 8, 0, k.SEP_LO, k.SEP_HI, lower)

    def verify_sets() -> None:
        for d, o in raw:
            k.signatures_kernel(d, o, 5, False, a[:0], b[:0], 0, 0, 4096, k.SEP_LO, k.SEP_HI, lower)

    def floor() -> None:
        for d, o in lowered:
            k.fnv_strings_kernel(d, o)

    read_share = n / sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    secs = {
        # Arrow decodes on its own I/O threads even with use_threads=False: count the whole process
        "read": cpu(read, repeats, time.process_time) * read_share,
        "buffers": cpu(buffers, repeats),
        "normalise (fallback)": cpu(normalise, repeats),
        "words+shingles": cpu(words, repeats),
        "distinct": cpu(distinct, repeats),
        "minhash+bands": cpu(signature, repeats),
        "verify sets": cpu(verify_sets, repeats),
        "floor": cpu(floor, repeats),
    }
    return {"docs": n, "text_mb": byts / 1e6, **secs}


def _process_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _artifact_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file of a fit's artifact but ``_fit.json`` (its timings vary)."""
    import hashlib
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "_fit.json"}


def fit_threads(lake: Path, repeats: int) -> list[dict]:
    """The ``minhash_dedup`` fit on one thread and on all granted cores, alternating (see the
    module docstring): one dict per run."""
    import shutil

    from engines.executor import LocalExecutor, ShardTask
    from filters.minhash.dedup import MinHashDedup
    from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashSignatures
    from schemas.config import ExecutorConfig
    raw = sorted(str(p) for p in (lake / "raw").rglob("*.parquet"))
    work = lake / "work"
    sig = MinHashSignatures({"ngram": 5, "num_perm": 112, "bands": 14, "rows": 8})
    k1 = sig.key("minhash_signatures")
    runs = []
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=4096), show_progress=False) as ex:
        res = ex.run_stage("minhash_signatures", sig, [ShardTask("bench", p, str(work / k1 / Path(p).name)) for p in raw])
        failed = [r.error for r in res if r.status == "failed"]
        if failed:
            raise RuntimeError(failed[0])
        for _ in range(repeats):
            for threads in (1, 0):
                ded = MinHashDedup({"threshold": 0.8, "survivor": "first", "threads": threads})
                ded.upstream = {c: k1 for c in (BANDS_COLUMN, COUNT_COLUMN)}
                tasks = [ShardTask("bench", p, "", tuple((c, str(work / k1 / Path(p).name), c)
                                                         for c in (BANDS_COLUMN, COUNT_COLUMN))) for p in raw]
                art = work / f"fit-threads-{threads}"
                shutil.rmtree(art, ignore_errors=True)
                art.mkdir(parents=True)
                load = os.getloadavg()[0]
                t, c = time.perf_counter(), _process_cpu()
                metrics = ex.fit(ded, tasks, str(art))
                runs.append({"threads": threads or ded.fit_threads(), "wall_s": time.perf_counter() - t,
                             "cpu_s": _process_cpu() - c, "load": load, "steps": metrics["seconds"],
                             "files": _artifact_digest(art)})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=None, help="only the first N documents")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fit", action="store_true", help="the fit on one thread and on all cores (see above)")
    a = ap.parse_args()
    if a.fit:
        runs = fit_threads(a.lake, a.repeats)
        print(native.describe())
        print(f"{'threads':>7}{'wall s':>8}{'cpu s':>8}{'load':>6}   fit steps (wall s)")
        for r in runs:
            steps = ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items())
            print(f"{r['threads']:>7}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}{r['load']:>6.1f}   {steps}")
        one = [r["wall_s"] for r in runs if r["threads"] == 1]
        many = [r["wall_s"] for r in runs if r["threads"] != 1]
        same = all(r["files"] == runs[0]["files"] for r in runs)
        print(f"best wall, one thread / all cores: {min(one) / min(many):.2f}x; "
              f"artifact files identical on every run: {same}")
        print(json.dumps([{k: v for k, v in r.items() if k != "files"} for r in runs]))
        return
    r = measure(a.lake, a.docs, a.repeats)
    n = r["docs"]
    print(native.describe())
    print(f"{n:,} documents, {r['text_mb']:.0f} MB of text; one thread, CPU seconds (best of {a.repeats}); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'phase':<22}{'cpu s':>8}{'docs/s':>12}{'MB/s':>8}   (cumulative phases include the ones above)")
    for key in ("read", "buffers", "normalise (fallback)", "words+shingles", "distinct", "minhash+bands", "verify sets", "floor"):
        s = r[key]
        print(f"{key:<22}{s:>8.2f}{n / s:>12,.0f}{r['text_mb'] / s:>8.0f}")
    sig = r["minhash+bands"]
    print(f"\nsignature kernel / one-pass hashing floor: {sig / r['floor']:.2f}x the floor's time "
          f"(words+shingles {r['words+shingles'] / r['floor']:.2f}x, distinct +{(r['distinct'] - r['words+shingles']) / r['floor']:.2f}x, "
          f"minhash+bands +{(sig - r['distinct']) / r['floor']:.2f}x)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
