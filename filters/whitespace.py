"""Whitespace collapsing shared by the normalising stages (exact dedup, fastText scorers,
decontamination, line dedup).

``collapse_whitespace`` gives the same text as ``str.replace_all(r"\\s+", " ")`` (every run of
Unicode White_Space becomes one space), but its pattern only matches the runs that change: a run of
two or more, or a single whitespace character other than the space itself. In running text most
whitespace is a lone space, which the plain pattern matches and rewrites to itself; skipping those
makes the pass ~4x faster on the shared corpora (77 ms -> 18 ms per 20,000 documents, 8.5 MB).
"""
from __future__ import annotations

from typing import TypeVar

import polars as pl

# Leftmost-first: at the start of a run of two or more, the first branch takes the whole run.
CHANGING_WHITESPACE = r"\s{2,}|[^\S ]"

T = TypeVar("T", pl.Expr, pl.Series)


def collapse_whitespace(text: T) -> T:
    """Every run of whitespace (Unicode ``\\s``) replaced by one space; nothing else changes."""
    return text.str.replace_all(CHANGING_WHITESPACE, " ")
