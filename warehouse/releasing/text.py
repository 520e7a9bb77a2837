"""``release.text``: which text a release carries, and what each cleaning step removed.

``release.text: [boilerplate.text_clean, c4.text_clean, pii.text_redacted]`` is a chain of derived
text columns (engines/derived_text.py), earliest first: each stage cleans the output of the one
before it, so the release carries ``coalesce(pii.text_redacted, c4.text_clean,
boilerplate.text_clean, text)``. The chain is wired explicitly in the pipeline file, never behind
the user's back: every stage after the first reads its text from the previous link
(``stages[].inputs: {text: boilerplate.text_clean}``), and ``check_chain`` says exactly which line
to add when one is missing. (Wiring it silently would change what the filters of those stages see,
and so what they keep, from a line in the release block.)

Per step and source the release records, over the rows it keeps: documents, documents changed,
characters and lines in, characters and lines removed (``manifest.text`` and the catalog table
``release_text``). A redaction can add characters (``a@b.org`` -> ``<EMAIL>``): removed is then
negative.
"""
from __future__ import annotations

from typing import Any

import polars as pl

from engines.derived_text import resolve


def check_chain(entries: list[str], text_columns: dict[str, tuple[str, ...]],
                reads_text_from: dict[str, str | None]) -> None:
    """Raise ValueError unless ``entries`` is a complete, wired chain.

    ``text_columns``: each configured stage's derived text columns; ``reads_text_from``: the
    ``stage.column`` each stage reads its text from (None: the raw text)."""
    derived = [f"{s}.{c}" for s, cols in text_columns.items() for c in cols]
    for i, entry in enumerate(entries):
        stage, _, col = entry.partition(".")
        if stage not in text_columns:
            raise ValueError(f"release.text[{i}]: no stage named {stage!r} (stages: {', '.join(text_columns)})")
        if col not in text_columns[stage]:
            raise ValueError(f"release.text[{i}]: {entry} is not a derived text column; derived text columns: "
                             f"{', '.join(derived) or 'none (add a c4, line_dedup or pii stage)'}")
        if entry in entries[:i]:
            raise ValueError(f"release.text lists {entry} twice")
        source = reads_text_from.get(stage)
        want = entries[i - 1] if i else None
        if source == want:
            continue
        if i == 0:
            raise ValueError(f"release.text starts at {entry}, but stage {stage} cleans {source}: list {source} "
                             f"(and the text it cleans) before {entry}")
        now = f"it now reads {source}" if source else "it now reads the raw text"
        raise ValueError(f"release.text applies {entry} after {want}, so stage {stage} must clean {want}'s output: "
                         f"add `inputs: {{text: {want}}}` to stages[{stage}] ({now})")


def release_text(entries: list[str]) -> pl.Expr:
    """The text the release carries (``text`` when the chain is empty)."""
    return resolve([pl.col(e) for e in entries], pl.col("text"))


def _lines(text: pl.Expr) -> pl.Expr:
    return text.str.count_matches("\n").cast(pl.Int64) + (text.str.len_bytes() > 0).cast(pl.Int64)


class TextStats:
    """What each step of the chain changed, per source, over the kept rows."""

    def __init__(self, entries: list[str]):
        self.entries = entries
        self.acc: dict[tuple[str, int], dict[str, int]] = {}

    def add(self, source: str, kept: pl.DataFrame, applies: dict[str, bool]) -> None:
        if not self.entries or not kept.height:
            return
        exprs = []
        for i, entry in enumerate(self.entries):
            before = resolve([pl.col(e) for e in self.entries[:i]], pl.col("text")).fill_null("")
            after = resolve([pl.col(e) for e in self.entries[:i + 1]], pl.col("text")).fill_null("")
            exprs += [pl.col(entry).is_not_null().sum().alias(f"{i}.docs_changed"),
                      before.str.len_chars().cast(pl.Int64).sum().alias(f"{i}.chars_in"),
                      (before.str.len_chars().cast(pl.Int64) - after.str.len_chars().cast(pl.Int64)).sum()
                      .alias(f"{i}.chars_removed"),
                      _lines(before).sum().alias(f"{i}.lines_in"),
                      (_lines(before) - _lines(after)).sum().alias(f"{i}.lines_removed")]
        row = kept.select(exprs).row(0, named=True)
        for i, entry in enumerate(self.entries):
            if not applies.get(entry.split(".", 1)[0], True):
                continue
            acc = self.acc.setdefault((source, i), {"docs": 0, "docs_changed": 0, "chars_in": 0, "chars_removed": 0,
                                                    "lines_in": 0, "lines_removed": 0})
            acc["docs"] += kept.height
            for k in ("docs_changed", "chars_in", "chars_removed", "lines_in", "lines_removed"):
                acc[k] += int(row[f"{i}.{k}"] or 0)

    def records(self) -> list[dict[str, Any]]:
        """One record per (source, step), steps in chain order: the manifest's ``text.steps``."""
        return [{"source": source, "step": i, "stage": self.entries[i].split(".", 1)[0],
                 "column": self.entries[i].split(".", 1)[1], **v}
                for (source, i), v in sorted(self.acc.items())]
