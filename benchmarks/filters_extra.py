"""Throughput of the ``langid`` and ``pii`` stages on real text, each beside a reference.

Builds --docs documents from the rows of the real corpora in ../shared/corpora (Wikipedia en/fr/es,
Python docs, Gutenberg: 26,820 rows, shuffled with a fixed seed, cycled past that), then times, in this one process, on the same documents:

- ``langid``: the stage's ``transform`` in batches of --batch rows, against the floor of calling
  the same fastText model's ``predict`` on the same one-line texts (what the stage adds: the script
  profile and the verdict);
- ``langid`` on long documents (--long, default 2,000): the real documents longer than 4,096
  characters (Python docs, Gutenberg, handbook pages from the WARC), cycled; the stage reading the
  whole text (``max_chars`` = 10**9: fastText over the whole document, as before the bound) against
  the stage with its default bound (``max_chars``: an 8,192-character sample in 4 windows), plus how
  often the two labels agree;
- ``pii``: the stage's ``transform`` (Polars regex over whole columns), against a naive reference:
  the same patterns run with Python's ``re`` one document at a time (``re.subn`` per pattern), whose
  output is checked equal to the stage's.

Prints docs/s and MB/s (UTF-8 bytes of text) for each, from the best of --repeat runs, and
ours / reference as a ratio (> 1: ours is faster).

    .venv/bin/python benchmarks/filters_extra.py --docs 20000
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters import pii as pii_mod  # noqa: E402
from filters.langid import LangId  # noqa: E402

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))


def load_docs(n: int, seed: int = 0) -> list[str]:
    """n documents: every row of the corpora (26,820) in a seeded random order, cycled if n is larger."""
    rows: list[str] = []
    for name in ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg"):
        rows.extend(pq.read_table(CORPORA / f"{name}.parquet", columns=["text"]).column("text").to_pylist())
    random.Random(seed).shuffle(rows)
    return [rows[i % len(rows)] for i in range(n)]


def load_long_docs(n: int) -> list[str]:
    """n documents longer than 4,096 characters: Python docs, Gutenberg and the handbook's pages
    (main text of each WARC record), in a seeded random order, cycled if n is larger."""
    from tests.heuristics.reference import handbook_texts

    rows: list[str] = []
    for name in ("python_docs", "gutenberg"):
        rows.extend(pq.read_table(CORPORA / f"{name}.parquet", columns=["text"]).column("text").to_pylist())
    rows.extend(handbook_texts(CORPORA).get_column("text").to_list())
    rows = [t for t in rows if t and len(t) > 4096]
    random.Random(1).shuffle(rows)
    return [rows[i % len(rows)] for i in range(n)]


def _py(pattern: str) -> re.Pattern:
    """A Rust-regex pattern of filters.pii in Python ``re`` syntax (same meaning)."""
    return re.compile(pattern.replace("(?-u:\\b)", "\\b").replace("\\x{FDD0}", "\ufdd0"), re.ASCII)


def naive_pii(texts: list[str]) -> list[tuple[str, int, int, int]]:
    """Per-document Python ``re``: the same patterns, steps and placeholders as the stage."""
    email, v4, v6, phone = (_py(p) for p in (pii_mod.EMAIL, pii_mod.IPV4, pii_mod.IPV6, pii_mod.PHONE))
    mask = _py(pii_mod._mask_pattern(False))
    mask_repl = pii_mod._MASK_TEMPLATE.replace("${", "\\g<").replace("}", ">")
    out = []
    for t in texts:
        t, n_email = email.subn(pii_mod.EMAIL_TOKEN, t)
        t = mask.sub(mask_repl, t)
        t, a = v4.subn("\\g<pre>" + pii_mod.IP_TOKEN, t)
        t, b = v6.subn("\\g<pre>" + pii_mod.IP_TOKEN, t)
        t, n_phone = phone.subn("\\g<pre>" + pii_mod.PHONE_TOKEN, t)
        out.append((t.replace(pii_mod._MARK, ""), n_email, a + b, n_phone))
    return out


REPEAT = 3


def timed(fn, *args):
    """(result, best wall time of REPEAT runs): the machine may be shared, the best run is the cleanest."""
    best = float("inf")
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return result, best


def report(name: str, docs: int, mb: float, seconds: float) -> None:
    print(f"  {name:<34} {docs / seconds:>10,.0f} docs/s {mb / seconds:>8.1f} MB/s  ({seconds:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3, help="time each side this many times, keep the best")
    ap.add_argument("--long", type=int, default=2000, help="long documents for the langid bound (0: skip)")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    texts = load_docs(args.docs)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    batches = [pl.DataFrame({"text": texts[i:i + args.batch]}) for i in range(0, len(texts), args.batch)]
    print(f"{len(texts):,} documents, {mb:.1f} MB of text, batches of {args.batch}, "
          f"polars threads {pl.thread_pool_size()}")

    print("langid (fastText lid.176.ftz)")
    stage = LangId()
    stage.setup(None)  # type: ignore[arg-type]
    one_line = [t.replace("\n", " ") for t in texts]
    _, floor_s = timed(lambda: [stage._model.predict(one_line[i:i + args.batch], k=1)
                                for i in range(0, len(one_line), args.batch)])
    out, ours_s = timed(lambda: pl.concat([stage.transform(b) for b in batches]))
    report("fastText predict alone (floor)", len(texts), mb, floor_s)
    report("langid stage", len(texts), mb, ours_s)
    print(f"  ours / floor: {floor_s / ours_s:.2f}  (languages: "
          f"{dict(out.get_column('lang').value_counts(sort=True).head(4).iter_rows())})")

    if args.long:
        long_docs = load_long_docs(args.long)
        long_mb = sum(len(t.encode()) for t in long_docs) / 1e6
        long_batches = [pl.DataFrame({"text": long_docs[i:i + args.batch]}) for i in range(0, len(long_docs), args.batch)]
        print(f"langid on long documents: {len(long_docs):,} documents over 4,096 characters, {long_mb:.1f} MB "
              f"(mean {long_mb * 1e6 / len(long_docs):,.0f} bytes)")
        whole = LangId({"max_chars": 10**9})
        whole.setup(None)  # type: ignore[arg-type]
        out_whole, whole_s = timed(lambda: pl.concat([whole.transform(b) for b in long_batches]))
        out_bound, bound_s = timed(lambda: pl.concat([stage.transform(b) for b in long_batches]))
        report("whole text (before)", len(long_docs), long_mb, whole_s)
        bound = stage.params.max_chars  # type: ignore[attr-defined]
        report(f"bounded sample, {bound:,} chars (after)", len(long_docs), long_mb, bound_s)
        same = (out_whole.get_column("lang") == out_bound.get_column("lang")).mean()
        print(f"  after / before: {whole_s / bound_s:.2f}x docs/s; same label as the whole text: {same:.2%}")

    print("pii (e-mail, IPv4/IPv6, phone)")
    stage_pii = pii_mod.PiiRedaction()
    out, ours_s = timed(lambda: pl.concat([stage_pii.transform(b) for b in batches]))
    ref, naive_s = timed(naive_pii, texts)
    report("naive per-document Python re", len(texts), mb, naive_s)
    report("pii stage (Polars)", len(texts), mb, ours_s)
    # The stage stores text_redacted only where it replaced something (null: the text as it was).
    redacted = out.with_columns(pl.col("text_redacted").fill_null(pl.Series(texts)))
    same = redacted.rows() == ref
    totals = out.select(pl.col("pii_email", "pii_ip", "pii_phone").sum()).row(0)
    print(f"  ours / naive: {naive_s / ours_s:.2f}  (outputs identical: {same}; found e-mail/IP/phone: {totals})")


if __name__ == "__main__":
    main()
