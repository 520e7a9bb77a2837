"""Global fits an executor may split into many tasks: map per shard, reduce per key partition.

A global stage whose fit groups documents by an integer key (exact dedup: the text hash) can
offer its fit in three steps besides ``fit``; an executor with many workers (the Ray executor)
then runs it as

1. **map**, one task per shard: ``fit_map(batch)`` for every batch of the shard (the stage's
   ``needs`` and fed columns, as ``fit`` gets them), giving one row per document with the
   integer column ``fit_key``; the rows are split into partitions by key (``split``);
2. **reduce**, one task per partition: ``fit_reduce(frames)`` over that partition's rows, the
   frames in lake order (shard by shard, rows in order), so "first in lake order" rules hold;
3. **finish**, once, where the artifact folder is: ``fit_finish(parts, documents, dir)`` writes
   the artifact from the reduced partitions (in partition order) and returns the fit's metrics.

The contract: ``fit_finish(reduce per partition of map over every shard)`` writes the same files
and metrics as ``fit`` over the same shards, for any number of partitions (the stage sorts what it
writes by key, never by partition). Stages never know which executor runs them; an executor that
does not split (the local one) calls ``fit``.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import polars as pl


@runtime_checkable
class PartitionedFit(Protocol):
    fit_key: str  # the integer column of fit_map's rows that decides their partition

    def fit_map(self, batch: pl.DataFrame) -> pl.DataFrame:
        """One batch of a shard -> its rows for the reduce step (with ``fit_key``), in batch order."""
        ...

    def fit_reduce(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """One partition's rows, in lake order (never empty) -> that partition's part of the artifact."""
        ...

    def fit_finish(self, parts: list[pl.DataFrame], documents: int, artifact_dir: str) -> dict[str, Any]:
        """Write the artifact from every partition's part; ``documents``: rows mapped. Returns metrics."""
        ...


def split(frame: pl.DataFrame, key: str, partitions: int) -> list[pl.DataFrame]:
    """``frame``'s rows by partition (the key's 64 bits, unsigned, modulo ``partitions``), each in
    the frame's order. Pure arithmetic on the key: every map task agrees on every key's partition."""
    part = frame.get_column(key).reinterpret(signed=False) % partitions
    return [frame.filter(part == p) for p in range(partitions)]
