"""FineWeb's additional quality rules (Penedo et al. 2024), vectorised: stage ``fineweb_quality``."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from engines.stage import Stage, StageContext, register_stage
from filters.heuristics.common import (
    KEEP_REASON,
    TERMINAL_PUNCTUATION,
    char_class,
    duplicates,
    first_failure,
    py_strip,
    stats_frame,
    verdict,
    with_lang,
)
from filters.heuristics.words import chunk_table, warm_up


class FineWebQualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    line_punct_thr: float = 0.12
    """Share of lines ending with a stop character below this: dropped (``fineweb_line_punct_ratio``)."""
    line_punct_exclude_zero: bool = False
    """Spare documents where that share is exactly 0."""
    stop_chars: list[str] | None = None
    """Characters that end a line "with punctuation"; null: 159 sentence-final marks."""
    short_line_thr: float = 0.67
    """Share of short lines above this: dropped (``fineweb_short_line_ratio``)."""
    short_line_length: int = 30
    """A line of at most this many characters is short."""
    char_duplicates_ratio: float = 0.01
    """Characters in lines repeating an earlier line above this share: dropped (``fineweb_char_dup_ratio``).
    Drops 66% of the Python docs (repeated code lines); 0.8% of Wikipedia summaries in all."""
    new_line_ratio: float = 0.3
    """Newlines per word above this (a list): dropped (``fineweb_list_ratio``)."""


@register_stage
class FineWebQuality(Stage):
    """FineWeb's rules on lines (``text.split("\\n")``, blank lines dropped), in datatrove's order.

    Defaults (datatrove ``FineWebQualityFilter``'s):

    =======================  ==========  ===========================================================
    parameter                default     drops the document (reason) when
    =======================  ==========  ===========================================================
    (always)                             no non-blank line (``fineweb_empty``)
    line_punct_thr           0.12        share of lines ending with a stop char < 0.12
                                         (``fineweb_line_punct_ratio``) ...
    line_punct_exclude_zero  False       ... unless this is set and the share is exactly 0
    stop_chars               None        the characters that end a line "with punctuation"; None is
                                         ``common.TERMINAL_PUNCTUATION`` (159 sentence-final marks)
    short_line_thr           0.67        share of lines of at most ``short_line_length`` characters
    short_line_length        30          > 0.67 (``fineweb_short_line_ratio``)
    char_duplicates_ratio    0.01        characters of lines repeating an earlier line, over the
                                         characters of the text without "\\n", > 0.01
                                         (``fineweb_char_dup_ratio``)
    new_line_ratio           0.3         "\\n" per word > 0.3, i.e. a list (``fineweb_list_ratio``)
    =======================  ==========  ===========================================================

    Lines are not stripped before the end-of-line test (a trailing space or "\\r" hides the mark), as
    in datatrove. Words are the document language's words (``words.py``); they are only counted for
    documents that passed the line rules.
    """

    kind = "fineweb_quality"
    version = "1"
    needs = ("text", "lang")
    Params = FineWebQualityParams

    def setup(self, ctx: StageContext) -> None:
        warm_up()

    def writes(self) -> dict[str, pa.DataType]:
        return dict(KEEP_REASON)

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: FineWebQualityParams = self.params  # type: ignore[assignment]
        docs = with_lang(batch)
        stop_chars = TERMINAL_PUNCTUATION if p.stop_chars is None else "".join(p.stop_chars)
        lines = (
            docs.select(pl.col("text").str.split("\n").alias("item"))
            .with_row_index("row")
            .explode("item")
            .filter(py_strip(pl.col("item")) != "")
        )
        if p.stop_chars is None or all(len(c) == 1 for c in p.stop_chars):
            ends_punct = pl.col("item").str.contains(f"[{char_class(stop_chars)}]$") if stop_chars else pl.lit(False)
        else:  # multi-character endings
            alts = "|".join(char_class(c) if len(c) == 1 else "".join(f"\\x{{{ord(x):X}}}" for x in c) for c in p.stop_chars if c)
            ends_punct = pl.col("item").str.contains(f"(?:{alts})$") if alts else pl.lit(False)
        per_row = lines.group_by("row").agg(
            n_punct=ends_punct.sum(),
            n_short=(pl.col("item").str.len_chars() <= p.short_line_length).sum(),
        )
        stats = (
            stats_frame(docs.height)
            .join(duplicates(lines), on="row", how="left")
            .join(per_row, on="row", how="left")
            .fill_null(0)
            .sort("row")
        )
        text = docs["text"]
        n_lines = stats["n_items"].to_numpy()
        chars_no_nl = (text.str.len_chars() - text.str.count_matches("\n", literal=True)).to_numpy()
        newlines = text.str.count_matches("\n", literal=True).to_numpy().astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            punct_ratio = stats["n_punct"].to_numpy() / n_lines
            short_ratio = stats["n_short"].to_numpy() / n_lines
            dup_ratio = stats["dup_chars"].to_numpy() / chars_no_nl
        empty = n_lines == 0
        punct_fail = (punct_ratio < p.line_punct_thr) & ~((punct_ratio == 0) & p.line_punct_exclude_zero)
        short_fail = short_ratio > p.short_line_thr
        dup_fail = dup_ratio > p.char_duplicates_ratio
        decided = empty | punct_fail | short_fail | dup_fail
        # words only for documents that reached the list rule
        list_fail = np.zeros(docs.height, dtype=bool)
        todo = np.flatnonzero(~decided)
        if todo.size:
            ct = chunk_table(docs[todo.tolist()])
            n_words = ct.row_sum(ct.n_tokens.astype(np.float64))
            with np.errstate(divide="ignore", invalid="ignore"):
                list_fail[todo] = newlines[todo] / n_words > p.new_line_ratio
        flags = pl.DataFrame(
            {"empty": empty, "punct": punct_fail, "short": short_fail, "dup": dup_fail, "list": list_fail}
        )
        reason = first_failure(
            [
                ("fineweb_empty", pl.col("empty")),
                ("fineweb_line_punct_ratio", pl.col("punct")),
                ("fineweb_short_line_ratio", pl.col("short")),
                ("fineweb_char_dup_ratio", pl.col("dup")),
                ("fineweb_list_ratio", pl.col("list")),
            ]
        )
        return flags.select(verdict(reason))
