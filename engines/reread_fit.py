"""A global fit in one process that reads some columns of every row once and a few rows again.

MinHash dedup verifies candidate pairs on shingle sets derived from the text, but only the
documents in a candidate pair need one (about half of a 200,000-document crawl with 24%
near duplicates; fewer in a cleaner corpus). A stage offering ``fit_two_pass`` gets its batches
without the columns it only needs for those rows (its ``needs`` during the first pass are its
own business: the executor reads them when each shard starts), and ``sides()``: a
``engines.partitioned_fit.Sides`` whose ``reread(requests)`` streams chosen shards again
through the stage's ``fit_reread`` (the partitioned fit's hook, so both executors share it).
``sides`` may be called only after every batch was consumed: it knows each shard's lake position
from the rows the first pass saw.

The local executor calls ``fit_two_pass`` for such a stage instead of ``fit``; its artifact is
``fit``'s, byte for byte (tests/minhash/test_partitioned_fit.py). The second pass rereads up to
``threads`` shards at once (the stage's ``fit_threads()``, else its ``context.threads``: what the
executor grants the fit) and hands them to the stage in shard order: the Parquet decode of one
shard overlaps the work on another, with at most ``threads`` shards in flight.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import polars as pl

from engines.partitioned_fit import Sides, in_order, starts


@runtime_checkable
class TwoPassFit(Protocol):
    def fit_two_pass(self, batches: Iterator[pl.DataFrame], sides: Callable[[], Sides],
                     artifact_dir: str) -> dict[str, Any]:
        """``fit`` over ``batches``, with ``sides().reread`` for a second pass over chosen rows."""
        ...

    def fit_reread(self, batches: Iterator[pl.DataFrame], request: Any) -> Any:
        """What the stage needs of the rows ``request`` of one shard's ``batches``."""
        ...


def fit_two_pass(stage: TwoPassFit, shards: Sequence[Callable[[], Iterator[pl.DataFrame]]],
                 artifact_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Run ``stage.fit_two_pass`` over ``shards`` (a callable per shard, in lake order, giving its
    batches with the columns the stage needs when the callable is called). ``threads``: shards
    reread at once (default: the stage's ``fit_threads()`` when it has one, else its
    ``context.threads``, else 1); the result does not depend on it."""
    if threads is None:
        own = getattr(stage, "fit_threads", None)
        threads = own() if callable(own) else getattr(getattr(stage, "context", None), "threads", None) or 1
    rows: list[int] = []

    def batches() -> Iterator[pl.DataFrame]:
        for shard in shards:
            rows.append(0)
            for batch in shard():
                rows[-1] += batch.height
                yield batch

    def reread(requests: dict[int, Any]) -> Iterator[tuple[int, Any]]:
        def one(item: tuple[int, Any]) -> tuple[int, Any]:
            return item[0], stage.fit_reread(shards[item[0]](), item[1])
        return in_order(one, sorted(requests.items()), threads)

    def sides() -> Sides:
        if len(rows) != len(shards):
            raise RuntimeError("fit_two_pass: sides() asked for before the first pass read every shard")
        return Sides(starts(rows), lambda i: [], reread)

    return stage.fit_two_pass(batches(), sides, artifact_dir)
