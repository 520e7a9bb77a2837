"""The convention for derived text columns: cleaned or redacted text a stage writes beside the raw text.

A stage that rewrites text (``c4``'s kept lines, ``line_dedup`` without boilerplate, ``pii``'s
redactions) never touches the raw shard; it writes the new text as a column of its annotations
and declares it in ``Stage.text_columns``. Such a column is **null where the text is unchanged**,
so text is stored once: the raw shard holds it, and an annotation file holds only the documents a
stage actually changed (on clean encyclopedic text that is most of them for ``pii``, few for
``line_dedup``).

Readers resolve a chain with ``coalesce``: the text after stages ``a``, ``b``, ``c`` (each reading
the previous one's output, see ``stages[].inputs``) is ``coalesce(c.col, b.col, a.col, text)``.
The executor does this when it feeds ``text`` to a stage from an earlier stage's derived column,
and the release does it for ``release.text``. A stage that does not apply to a source contributes
nulls, so the chain falls through to the earlier text.
"""
from __future__ import annotations

import polars as pl


def store_once(new: pl.Expr, old: pl.Expr) -> pl.Expr:
    """``new`` where it differs from ``old``, else null (the convention above)."""
    return pl.when(new == old).then(pl.lit(None, pl.String)).otherwise(new)


def resolve(chain: list[pl.Expr], base: pl.Expr) -> pl.Expr:
    """The text after a chain of derived columns (earliest first), falling back to ``base``."""
    return pl.coalesce([*reversed(chain), base]) if chain else base


Feed = tuple[str, str, str]  # (column the stage sees, upstream stage or "" for the document, upstream column)


def chain_feed(col: str, up: str, up_col: str, up_feeds: list[Feed]) -> list[Feed]:
    """The feed of ``col`` from derived text ``up.up_col``: that column, then whatever text ``up``
    itself read (its own chain), ending at the document's ``text``."""
    inherited = [(col, u, c) for alias, u, c in up_feeds if alias == "text"]
    return [(col, up, up_col), *(inherited or [(col, "", "text")])]


def feeds_for_source(feeds: list[Feed], applies: dict[str, bool]) -> list[Feed]:
    """The feeds of one source: links of a derived-text chain whose stage does not run on the
    source are left out (the chain falls through to the earlier text); other feeds stay."""
    count: dict[str, int] = {}
    for col, _, _ in feeds:
        count[col] = count.get(col, 0) + 1
    return [f for f in feeds if not f[1] or count[f[0]] == 1 or applies.get(f[1], True)]
