"""Heuristic filters, this project vs datatrove, on the same real documents in one run.

    .venv/bin/python benchmarks/filters.py                 # 20,000 documents, 2 worker processes
    .venv/bin/python benchmarks/filters.py --docs 5000 --workers 1

The documents are a seeded shuffle of all of the shared corpora (Wikipedia en/fr/es summaries, the
Python docs, Gutenberg, and the handbook WARC's pages extracted with resiliparse), cycled only if
``--docs`` asks for more than there are. Both sides get the same ``--workers`` processes, each with
the same share of documents (round robin); Polars runs one thread per process.

- datatrove: each document goes through GopherQuality, GopherRepetition, C4Quality (on a copy) and
  FineWebQuality, as a datatrove pipeline would run them, so its word-split cache is shared by the
  three filters that split words (spaCy tokenizer, ``words`` line). Every filter sees every document
  (we annotate rather than drop, so the work compared is the same).
- ours: the four stages, one after the other, over batches of ``--batch`` rows, as the executor runs
  them; each stage splits words itself.

Per filter, datatrove's time is its own plus, for the three filters that need words, the shared
word splitting (what the filter costs when run alone). Per-filter times are CPU seconds of the worker
processes (``time.process_time``; each side runs one thread per process), so that other programs on a
shared machine do not skew them; docs/s = documents / (summed CPU seconds / workers). The last line is
plain wall-clock time of each whole run (process start, imports and setup included). Verdict agreement
is printed as a sanity check.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = ("gopher_quality", "gopher_repetition", "c4", "fineweb_quality")


def _datatrove_worker(path: str) -> tuple[bytes, dict[str, float]]:
    import polars as pl

    from tests.heuristics.reference import datatrove_verdicts

    docs = pl.read_parquet(path)
    res, seconds = datatrove_verdicts(docs)
    return res.drop("c4_text").write_ipc(None).getvalue(), seconds


def _ours_worker(path: str, batch_rows: int) -> tuple[bytes, dict[str, float], dict[str, float]]:
    import polars as pl

    from filters.heuristics import gopher, words
    from tests.heuristics.reference import our_verdicts

    docs = pl.read_parquet(path)
    res, seconds = our_verdicts(docs, batch_rows)
    stats = {**{f"rule_{k}": float(v) for k, v in words.RULE_STATS.items()},
             **{f"scan_{k}": float(v) for k, v in gopher.SCAN_STATS.items()}}
    return res.drop("c4_text_clean").write_ipc(None).getvalue(), seconds, stats


def load_docs(corpora: Path, n: int, seed: int):
    import polars as pl

    from tests.heuristics.reference import SOURCES, load_source

    every = pl.concat([load_source(corpora, s) for s in SOURCES]).sample(fraction=1.0, shuffle=True, seed=seed)
    reps = -(-n // every.height)
    return pl.concat([every] * reps).head(n).with_row_index("id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4096, help="rows per batch for our stages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpora", type=Path, default=Path(os.environ.get("CURATE_CORPORA", REPO.parent / "shared" / "corpora")))
    ap.add_argument("--skip-datatrove", action="store_true", help="time only this project")
    ap.add_argument("--skip-extra", action="store_true", help="skip the language ID and PII throughput")
    args = ap.parse_args()

    os.environ["POLARS_MAX_THREADS"] = "1"  # one thread per worker process (set before polars loads)
    import polars as pl

    from engines import native
    from tests.heuristics.reference import agreement

    print(native.describe(), flush=True)  # CPU, SIMD flags and the kernel path (CURATE_SIMD forces one)
    t0 = time.perf_counter()
    docs = load_docs(args.corpora, args.docs, args.seed)
    chars = int(docs["text"].str.len_chars().sum())
    print(f"{docs.height} documents, {chars / 1e6:.1f} M characters "
          f"({', '.join(f'{s}: {c}' for s, c in docs.group_by('source').len().sort('source').iter_rows())}); "
          f"loaded in {time.perf_counter() - t0:.1f}s; {args.workers} worker process(es); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for w in range(args.workers):
            path = os.path.join(tmp, f"shard-{w}.parquet")
            docs.filter(pl.col("id") % args.workers == w).write_parquet(path)
            paths.append(path)
        with ctx.Pool(args.workers) as pool:
            t = time.perf_counter()
            ours = pool.starmap(_ours_worker, [(p, args.batch) for p in paths])
            ours_wall = time.perf_counter() - t
        theirs = None
        if not args.skip_datatrove:
            with ctx.Pool(args.workers) as pool:
                t = time.perf_counter()
                theirs = pool.map(_datatrove_worker, paths)
                theirs_wall = time.perf_counter() - t

    n = docs.height
    w = args.workers
    our_sec = {k: sum(r[1][k] for r in ours) for k in KINDS}
    stats = {k: sum(r[2][k] for r in ours) for k in ours[0][2]}
    print(f"\nours: {stats['rule_chunks']:.0f} distinct rare chunks split by the exact rules in Python "
          f"({stats['rule_seconds']:.1f}s, memo hits {stats['rule_memo_hits']:.0f}), "
          f"{stats['rule_compounds']:.0f} compounds split vectorised; "
          f"{stats['scan_docs']:.0f} (document, n) exact duplicated-n-gram scans ({stats['scan_seconds']:.2f}s)")
    header = f"{'filter':<20}{'ours docs/s':>14}{'datatrove docs/s':>18}{'ratio':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    if theirs is None:
        for k in KINDS:
            print(f"{k:<20}{n / (our_sec[k] / w):>14,.0f}{'-':>18}{'-':>9}")
        print(f"{'all four':<20}{n / (sum(our_sec.values()) / w):>14,.0f}")
        print(f"{'all four, wall':<20}{n / ours_wall:>14,.0f}")
        return
    dt_sec = {k: sum(r[1][k] for r in theirs) for k in ("words", *KINDS)}
    for k in KINDS:
        theirs_k = dt_sec[k] + (dt_sec["words"] if k != "c4" else 0.0)
        ours_k = n / (our_sec[k] / w)
        dt_k = n / (theirs_k / w)
        print(f"{k:<20}{ours_k:>14,.0f}{dt_k:>18,.0f}{ours_k / dt_k:>8.1f}x")
    ours_all = n / (sum(our_sec.values()) / w)
    theirs_all = n / (sum(dt_sec.values()) / w)
    print(f"{'all four':<20}{ours_all:>14,.0f}{theirs_all:>18,.0f}{ours_all / theirs_all:>8.1f}x")
    ours_wall_rate, theirs_wall_rate = n / ours_wall, n / theirs_wall
    print(f"{'all four, wall':<20}{ours_wall_rate:>14,.0f}{theirs_wall_rate:>18,.0f}"
          f"{ours_wall_rate / theirs_wall_rate:>8.1f}x")
    print(f"\n'all four': the four filters' CPU time (datatrove: its word splitting counted once, "
          f"{dt_sec['words'] / w:.1f}s per worker). 'wall': the whole run of each side, process start, "
          f"imports, setup and result transfer included: "
          f"ours {ours_wall:.1f}s, datatrove {theirs_wall:.1f}s. Load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")

    mine = pl.concat([pl.read_ipc(r[0]) for r in ours])
    dt = pl.concat([pl.read_ipc(r[0]) for r in theirs])
    agree = agreement(mine, dt, docs).group_by("filter", maintain_order=True).agg(
        agree=(pl.col("agree") * pl.col("docs")).sum() / pl.col("docs").sum()
    )
    print("verdict agreement: " + ", ".join(f"{k} {a:.2%}" for k, a in agree.iter_rows()))
    if not args.skip_extra:  # language ID and PII throughput on the same number of documents
        import subprocess
        import sys
        subprocess.run([sys.executable, str(Path(__file__).with_name("filters_extra.py")), "--docs", str(args.docs)],
                       check=False)


if __name__ == "__main__":
    main()
