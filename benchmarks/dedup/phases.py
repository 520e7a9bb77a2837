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

    .venv/bin/python -m benchmarks.dedup.phases --lake /tmp/dedup-bench/lake-200k-s7
    CURATE_SIMD=avx2 .venv/bin/python -m benchmarks.dedup.phases --lake ...
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from engines import native
from filters.minhash import kernels as k
from filters.minhash.signatures import MinHashParams, SignatureComputer, normalised_text, string_buffers


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=None, help="only the first N documents")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
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
