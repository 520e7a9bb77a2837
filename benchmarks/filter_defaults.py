"""Which default rules drop which kind of text: the heuristic filters with their default parameters
on short encyclopedic text (Wikipedia summaries), technical pages and a crawled web site.

    .venv/bin/python -m benchmarks.filter_defaults [--corpora ../shared/corpora]

Prints, per corpus and filter, the share of documents dropped and the rules that dropped them
(each document counted once, under the first failing rule, as the stages report it). The README's
notes on web-crawl versus encyclopedic defaults quote these figures. Not a speed benchmark: it
measures what the defaults do to text a user might feed them.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import polars as pl

import filters.heuristics  # noqa: F401  (registers the stages)
from engines.stage import StageContext, stage_class

KINDS = ("gopher_quality", "gopher_repetition", "c4", "fineweb_quality")


def _handbook_english(path: Path) -> list[str]:
    """Main text of the handbook's English pages, extracted as the WARC reader does for ingest."""
    from readers.warc import read_warc
    from schemas.config import SourceConfig
    src = SourceConfig(name="handbook", format="warc", paths=[str(path)])
    texts: list[str] = []
    for item in read_warc(str(path), src):
        if hasattr(item, "column") and "text" in item.column_names:
            urls = item.column("url").to_pylist()
            texts += [t for t, u in zip(item.column("text").to_pylist(), urls) if u and "/en-US/" in u and t]
    return texts


def corpora_texts(root: Path) -> dict[str, list[str]]:
    return {
        "wiki_en summaries": pl.read_parquet(root / "wiki_en.parquet", columns=["text"]).get_column("text").to_list(),
        "python docs": pl.read_parquet(root / "python_docs.parquet", columns=["text"]).get_column("text").to_list(),
        "handbook crawl (en)": _handbook_english(root / "handbook.warc.gz"),
    }


def drop_table(texts: dict[str, list[str]]) -> pl.DataFrame:
    rows = []
    for corpus, docs in texts.items():
        frame = pl.DataFrame({"text": docs, "lang": ["en"] * len(docs)})
        words = frame.select(pl.col("text").str.count_matches(r"\S+").median()).item()
        kept_by_all = pl.Series([True] * len(docs))
        for kind in KINDS:
            stage = stage_class(kind)()
            stage.setup(StageContext())
            out = pl.concat([stage.transform(b) for b in frame.iter_slices(2048)])
            kept_by_all = kept_by_all & out.get_column("keep")
            reasons = out.filter(~pl.col("keep")).group_by("reason").len().sort("len", descending=True)
            rows.append({"corpus": corpus, "docs": len(docs), "median_words": words, "filter": kind,
                         "dropped": round(1 - out.get_column("keep").mean(), 3),
                         "rules": ", ".join(f"{r} {n / len(docs):.0%}" for r, n in reasons.iter_rows())})
        rows.append({"corpus": corpus, "docs": len(docs), "median_words": words, "filter": "all four",
                     "dropped": round(1 - kept_by_all.mean(), 3), "rules": ""})  # type: ignore[operator]
    return pl.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("CURATE_CORPORA", str(Path(__file__).resolve().parents[2] / "shared" / "corpora"))
    ap.add_argument("--corpora", default=default)
    args = ap.parse_args()
    table = drop_table(corpora_texts(Path(args.corpora)))
    with pl.Config(tbl_rows=-1, fmt_str_lengths=120, tbl_width_chars=200):
        print(table)


if __name__ == "__main__":
    main()
