"""Export throughput against raw batched ``tokenizers`` encoding of the same texts.

Builds a release folder of real text from ../shared/corpora (Wikipedia en/fr and the Python
docs, planned with UniMax, sampled with repeats, ordered by folding on compression ratio; see
``tests/export/release_builder.py``), repeated up to about --mb megabytes of text, with the
SmolLM2 tokenizer (built once under .cache/). Then, on the same texts in the same run:

- raw: ``Tokenizer.encode_batch`` over each shard's texts (the texts already in memory, ids
  left inside the Encoding objects), and the same with ``encode_batch_fast``;
- ours: ``export_release`` to each tokenised format (megatron, mds, hf with input_ids): read
  the shards, verify their sha256, tokenise, write the files.

Prints MB/s of each and ours / raw (the issue's target: >= 0.8 against ``encode_batch``), each
format tokenising for itself (no token cache). Then all the formats one after the other, as a user
exporting a release for several trainers does: each tokenising again (before), and with the token
cache (after: the first format tokenises and stores the ids, the others read them), and per format
the time of an export that reads cached ids.

    .venv/bin/python benchmarks/export.py --mb 8 --formats megatron,mds,hf
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.export.release_builder import build_release  # noqa: E402
from tests.export.smollm2 import build_tokenizer  # noqa: E402
from warehouse.export import export_release  # noqa: E402
from warehouse.export.release_reader import open_release  # noqa: E402

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=8.0, help="approximate MB of text in the release")
    ap.add_argument("--formats", default="megatron,mds,hf")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best is kept")
    args = ap.parse_args()
    tok_path = build_tokenizer()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    work = Path(tempfile.mkdtemp(prefix="curate-export-bench-"))
    try:
        base = {"wiki_en": 4000, "wiki_fr": 2000, "python_docs": 120}
        probe = build_release(work / "probe", CORPORA, sources=base, shard_rows=2000)
        mb_probe = sum(len(t.encode()) for p in sorted(probe.glob("shard-*.parquet"))
                       for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()) / 1e6
        repeat = max(1, round(args.mb / mb_probe))
        release = build_release(work / "release", CORPORA, sources=base, shard_rows=2000, repeat=repeat)
        shards = [pq.read_table(release / s["file"], columns=["text"]).column("text").to_pylist()
                  for s in open_release(release).shards]
        mb = sum(len(t.encode()) for texts in shards for t in texts) / 1e6
        n_docs = sum(len(t) for t in shards)
        print(f"release: {n_docs:,} documents, {mb:.1f} MB of text, {len(shards)} shards; tokenizer SmolLM2 "
              f"({os.cpu_count()} cores)")

        def best(fn) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        raw = best(lambda: [tok.encode_batch(texts, add_special_tokens=False) for texts in shards])
        raw_fast = best(lambda: [tok.encode_batch_fast(texts, add_special_tokens=False) for texts in shards])
        print(f"raw encode_batch:       {mb / raw:7.2f} MB/s")
        print(f"raw encode_batch_fast:  {mb / raw_fast:7.2f} MB/s")
        for fmt in [f for f in args.formats.split(",") if f]:
            out = work / f"out-{fmt}"

            def run(fmt: str = fmt, out: Path = out) -> None:
                export_release(release, out, fmt, tok_path, overwrite=True, token_cache=None)  # type: ignore[arg-type]

            t = best(run)
            print(f"export {fmt:9s}        {mb / t:7.2f} MB/s   ours/raw encode_batch = {raw / t:.2f}   "
                  f"ours/raw encode_batch_fast = {raw_fast / t:.2f}")
        formats = [f for f in args.formats.split(",") if f]
        cache = work / "tokens"

        def all_formats(token_cache: Path | None) -> None:
            if token_cache is not None:
                shutil.rmtree(token_cache, ignore_errors=True)  # cold: the first format tokenises
            for fmt in formats:
                export_release(release, work / f"all-{fmt}", fmt, tok_path, overwrite=True,  # type: ignore[arg-type]
                               token_cache=token_cache)

        before = best(lambda: all_formats(None))
        after = best(lambda: all_formats(cache))
        print(f"{' + '.join(formats)}: tokenising for each {before:.2f} s, tokenising once {after:.2f} s "
              f"({before / after:.2f}x)")
        for fmt in formats:
            warm = best(lambda fmt=fmt: export_release(release, work / f"warm-{fmt}", fmt, tok_path,  # type: ignore[misc]
                                                       overwrite=True, token_cache=cache))
            print(f"export {fmt:9s} from cached ids {mb / warm:7.2f} MB/s of text")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
