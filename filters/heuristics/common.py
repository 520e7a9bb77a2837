"""Pieces shared by the heuristic filter stages: character sets, line splitting, duplicates, verdicts.

Everything here is a Polars expression or a whole-batch frame operation.
"""
from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from filters.heuristics.words import PY_WHITESPACE, char_class, lang_key

#: Sentence-final punctuation of many scripts (datatrove's ``TERMINAL_PUNCTUATION``, 159 characters).
TERMINAL_PUNCTUATION = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944"
    "\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c"
    "\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877"
    "\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e"
    "\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86"
    "\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1"
    "\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238"
    "\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9"
    "\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2"
    "\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d"
    "\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42"
    "\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38"
    "\U00016b44\U00016e98\U0001bc9f\U0001da88"
)

#: What datatrove's Gopher filter counts as a symbol: ASCII and common CJK/typographic punctuation,
#: C0/C1 control characters (not tab or newline), and the terminal punctuation above. A word made
#: only of these is not a word for the word-count rules. (The fullwidth digit one is in datatrove's
#: list too; kept for parity.)
PUNCTUATION = (
    "".join(chr(c) for c in (*range(0, 9), *range(11, 32), *range(127, 160)))
    + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«´»–—’“”„…∶━►、。〈〉《》「」【】！％（），．１：；？～"
)
PUNCTUATION_SET = frozenset(PUNCTUATION) | frozenset(TERMINAL_PUNCTUATION)

# Python's str.splitlines() boundaries, folded to "\n" ("\r\n" counts once).
_LINE_BREAKS = r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"
# Python whitespace that is not a line boundary (what may remain inside a split line).
INLINE_SPACE = "[\\t \\x1f\\xa0\\u1680\\u2000-\\u200a\\u202f\\u205f\\u3000]"


def py_strip(e: pl.Expr) -> pl.Expr:
    """``str.strip()`` with Python's whitespace (which adds U+001C..U+001F to Unicode's)."""
    return e.str.strip_chars(PY_WHITESPACE)


def splitlines_text(e: pl.Expr) -> pl.Expr:
    """The text with every ``str.splitlines()`` boundary replaced by one ``"\\n"``."""
    return e.str.replace_all(_LINE_BREAKS, "\n")


def splitlines_list(e: pl.Expr) -> pl.Expr:
    """``str.splitlines()`` as a list column (no trailing empty line; an empty text has no lines)."""
    norm = splitlines_text(e)
    # a final line break does not open a new line; an empty text has no line at all
    lines = norm.str.strip_suffix("\n").str.split("\n")
    return pl.when(e.str.len_chars() == 0).then(pl.lit([], pl.List(pl.Utf8))).otherwise(lines)


def splitlines_count(e: pl.Expr) -> pl.Expr:
    """``len(text.splitlines())``."""
    norm = splitlines_text(e)
    n = norm.str.count_matches("\n", literal=True) + 1 - norm.str.ends_with("\n").cast(pl.UInt32)
    return pl.when(e.str.len_chars() == 0).then(0).otherwise(n)


def duplicates(items: pl.DataFrame, row: str = "row", item: str = "item") -> pl.DataFrame:
    """datatrove's ``find_duplicates`` per row: items equal to an earlier item of the same row.

    ``items`` holds ``row`` and ``item`` in order; returns ``row``, ``n_items``, ``dup_items`` and
    ``dup_chars`` (the characters of the repeated items).
    """
    return (
        items.with_columns(_dup=~pl.struct(row, item).is_first_distinct())
        .group_by(row)
        .agg(
            n_items=pl.len(),
            dup_items=pl.col("_dup").sum(),
            dup_chars=pl.col(item).str.len_chars().filter(pl.col("_dup")).sum(),
        )
    )


def with_lang(batch: pl.DataFrame) -> pl.DataFrame:
    """``text`` and a normalised ``lang`` key (English where the column is missing or null)."""
    text = pl.col("text").fill_null("")
    if "lang" in batch.columns:
        return batch.select(text=text, lang=lang_key(pl.col("lang").cast(pl.Utf8)))
    return batch.select(text=text, lang=pl.lit("en"))


def stats_frame(n: int) -> pl.DataFrame:
    """A frame with ``row`` 0..n-1 to left-join per-row aggregates onto."""
    return pl.DataFrame({"row": pl.arange(0, n, eager=True).cast(pl.UInt32)})


def first_failure(rules: list[tuple[str, pl.Expr | None]]) -> pl.Expr:
    """The name of the first rule whose condition is true (null when none is)."""
    expr: Any = None
    for name, cond in rules:
        if cond is None:
            continue
        expr = (pl.when(cond) if expr is None else expr.when(cond)).then(pl.lit(name))
    if expr is None:
        return pl.lit(None, pl.Utf8)
    return expr.otherwise(pl.lit(None, pl.Utf8))


def verdict(reason: pl.Expr) -> list[pl.Expr]:
    return [reason.is_null().alias("keep"), reason.cast(pl.Utf8).alias("reason")]


KEEP_REASON: dict[str, pa.DataType] = {"keep": pa.bool_(), "reason": pa.string()}

__all__ = [
    "INLINE_SPACE",
    "KEEP_REASON",
    "PUNCTUATION",
    "PUNCTUATION_SET",
    "TERMINAL_PUNCTUATION",
    "char_class",
    "duplicates",
    "first_failure",
    "py_strip",
    "splitlines_count",
    "splitlines_list",
    "splitlines_text",
    "stats_frame",
    "verdict",
    "with_lang",
]
