"""Texts of a few raw rows, picked up as the release pass goes by them, for the release's report.

The report shows the first line of each member of the largest duplicate clusters; without help
it reads each member's text back from its raw shard, decoding a whole 10,000-row row group of
text per member (~30 members over ~13 row groups at 200,000 documents: most of the report's
CPU). Those members depend only on the annotation files, so they are known before the release
starts (``warehouse.report.sections.shown_duplicates``), and the release pass holds every raw
text in its chunks anyway. ``PickedTexts`` keeps the texts of the wanted (raw shard, row)
positions as the chunks go by (``add``); the report takes them from ``texts`` and reads only
the rows it does not find there, so what it shows is the same either way.

Memory: the wanted texts (a few dozen documents). Cost per chunk: one dictionary look-up, plus a
slice of the chunk's text column for each wanted row in it.
"""
from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa


class PickedTexts:
    """The raw texts of ``wanted`` (raw shard, row) positions, from the chunks of the release pass."""

    def __init__(self, wanted: Iterable[tuple[str, int]]):
        self._wanted: dict[str, list[int]] = {}
        for raw, row in wanted:
            self._wanted.setdefault(raw, []).append(int(row))
        self.texts: dict[tuple[str, int], str] = {}
        self._raw, self._offset = "", 0

    def add(self, raw: str, texts: pa.Array | pa.ChunkedArray) -> None:
        """The raw ``text`` column of the next chunk of raw shard ``raw`` (chunks of a shard
        arrive in order, from its first row)."""
        if raw != self._raw:
            self._raw, self._offset = raw, 0
        start, self._offset = self._offset, self._offset + len(texts)
        for r in self._wanted.get(raw, ()):
            if start <= r < self._offset:
                self.texts[(raw, r)] = texts[r - start].as_py() or ""  # a null text reads back as "" (report.fates.read_texts)
