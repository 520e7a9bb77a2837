"""Real documents from the shared corpora, and datatrove's verdicts on them (test and bench only).

``datatrove`` (and spaCy, which it uses to split words) are test/bench extras: only this module, the
parity test and ``benchmarks/filters.py`` import them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import polars as pl

from filters.heuristics.words import STOP_WORDS

SOURCES = ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg", "handbook")
WIKI_LANG = {"wiki_en": "en", "wiki_fr": "fr", "wiki_es": "es"}
# datatrove names languages with ISO 639-3 codes
DATATROVE_LANG = {"en": "eng", "fr": "fra", "es": "spa"}
KINDS = ("gopher_quality", "gopher_repetition", "c4", "fineweb_quality")
# our reason = prefix + datatrove's reason
REASON_PREFIX = {"gopher_quality": "", "gopher_repetition": "gopher_rep_", "c4": "c4_", "fineweb_quality": "fineweb_"}


def handbook_texts(corpora: Path) -> pl.DataFrame:
    """Main-content text of every HTML page of ``handbook.warc.gz`` (fastwarc + resiliparse)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    urls, texts = [], []
    with open(corpora / "handbook.warc.gz", "rb") as f:  # fastwarc reads the gzip members itself
        for record in ArchiveIterator(f, record_types=WarcRecordType.response):
            body = record.reader.read()
            html = bytes_to_str(body, detect_encoding(body) or "utf-8")
            urls.append(record.headers.get("WARC-Target-URI"))
            texts.append(extract_plain_text(html, main_content=True))
    return pl.DataFrame({"url": urls, "text": texts}, schema={"url": pl.Utf8, "text": pl.Utf8})


def load_source(corpora: Path, source: str) -> pl.DataFrame:
    """``text``, ``lang`` (wiki: its language; others: null, i.e. English) and ``source``."""
    if source == "handbook":
        df = handbook_texts(corpora).select("text")
    else:
        df = pl.read_parquet(corpora / f"{source}.parquet", columns=["text"])
    return df.select(
        pl.col("text").cast(pl.Utf8),
        lang=pl.lit(WIKI_LANG.get(source), pl.Utf8),
        source=pl.lit(source),
    )


def sample(corpora: Path, per_source: dict[str, int], seed: int = 0) -> pl.DataFrame:
    """A seeded sample of ``per_source[s]`` documents of each source (all of it if fewer), with ``id``."""
    parts = []
    for source, n in per_source.items():
        df = load_source(corpora, source)
        parts.append(df.sample(n=min(n, df.height), seed=seed, shuffle=True))
    return pl.concat(parts).with_row_index("id")


def datatrove_filters(lang: str | None) -> dict[str, Any]:
    """datatrove's four filters with default parameters for a language (our stop words for gopher)."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    key = lang if lang in DATATROVE_LANG else "en"
    code = DATATROVE_LANG[key]
    return {
        "gopher_quality": GopherQualityFilter(language=code, stop_words=list(STOP_WORDS[key])),
        "gopher_repetition": GopherRepetitionFilter(language=code),
        "c4": C4QualityFilter(language=code),
        "fineweb_quality": FineWebQualityFilter(language=code),
    }


def datatrove_verdicts(
    docs: pl.DataFrame, clock: Callable[[], float] = time.process_time
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Run datatrove's four filters on every document (as a pipeline would: one document through all
    four, sharing datatrove's word-split cache). Returns ``id``, ``<kind>_keep``, ``<kind>_reason``
    (prefixed like ours), ``c4_text`` (datatrove's cleaned text, kept documents only), and seconds per
    filter by ``clock`` (``words``: the shared word splitting; CPU time by default)."""
    from datatrove.data import Document
    from datatrove.utils.text import split_into_words

    filters: dict[str | None, dict[str, Any]] = {}
    for lang in docs["lang"].unique().to_list():  # load spaCy's tokenizers before timing
        filters[lang] = datatrove_filters(lang)
        split_into_words("Warm up.", DATATROVE_LANG.get(lang or "en", "eng"))
    seconds = dict.fromkeys(("words", *KINDS), 0.0)
    rows: list[dict[str, Any]] = []
    for id_, text, lang in docs.select("id", "text", "lang").iter_rows():
        if lang not in filters:
            filters[lang] = datatrove_filters(lang)
        fs = filters[lang]
        code = DATATROVE_LANG.get(lang or "en", "eng")
        t = clock()
        split_into_words(text, code)  # fills datatrove's cache, as the first word-using filter would
        seconds["words"] += clock() - t
        row: dict[str, Any] = {"id": id_}
        for kind, f in fs.items():
            doc = Document(text=text, id=str(id_))
            t = clock()
            res = f.filter(doc)
            seconds[kind] += clock() - t
            keep, reason = (res, None) if isinstance(res, bool) else res
            row[f"{kind}_keep"] = bool(keep)
            row[f"{kind}_reason"] = None if keep else REASON_PREFIX[kind] + str(reason)
            if kind == "c4":
                row["c4_text"] = doc.text if keep else None
        rows.append(row)
    schema: dict[str, Any] = {"id": pl.UInt32, "c4_text": pl.Utf8}
    for kind in KINDS:
        schema[f"{kind}_keep"] = pl.Boolean
        schema[f"{kind}_reason"] = pl.Utf8
    return pl.DataFrame(rows, schema=schema), seconds


def our_verdicts(
    docs: pl.DataFrame, batch_rows: int = 4096, clock: Callable[[], float] = time.process_time
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Run our four stages over ``docs`` batch by batch, stage after stage (as the executor does).
    Returns the verdicts and seconds per stage by ``clock`` (CPU time by default)."""
    import filters.heuristics  # noqa: F401  (registers the stages)
    from engines.stage import StageContext, stage_class

    out = docs.select("id")
    seconds = {}
    for kind in KINDS:
        stage = stage_class(kind)()
        stage.setup(StageContext())  # once per worker, as the executor does
        t = clock()
        parts = [stage.transform(b) for b in docs.select("id", "text", "lang").iter_slices(batch_rows)]
        seconds[kind] = clock() - t
        res = pl.concat(parts)
        out = out.with_columns(res["keep"].alias(f"{kind}_keep"), res["reason"].alias(f"{kind}_reason"))
        if kind == "c4":
            # text_clean is null where the text is unchanged (engines/derived_text.py): resolve it
            out = out.with_columns(res["text_clean"].fill_null(docs["text"]).alias("c4_text_clean"))
    return out, seconds


def agreement(ours: pl.DataFrame, theirs: pl.DataFrame, docs: pl.DataFrame) -> pl.DataFrame:
    """Per source and filter: documents, keep/drop agreement, reason agreement."""
    j = docs.select("id", "source").join(ours, on="id").join(theirs, on="id", suffix="_dt")
    rows = []
    for kind in KINDS:
        k, r = f"{kind}_keep", f"{kind}_reason"
        per = j.group_by("source", maintain_order=True).agg(
            docs=pl.len(),
            agree=(pl.col(k) == pl.col(k + "_dt")).mean(),
            reason_agree=(pl.col(r).fill_null("") == pl.col(r + "_dt").fill_null("")).mean(),
            kept=pl.col(k + "_dt").mean(),
        )
        rows.append(per.with_columns(filter=pl.lit(kind)))
    return pl.concat(rows).select("filter", "source", "docs", "agree", "reason_agree", "kept")
