"""Global fits an executor may split into many tasks: map per shard, reduce per key partition.

A global stage whose fit groups documents by an integer key (exact dedup: the text hash; MinHash
dedup: the band key's bucket partition) can offer its fit in three steps besides ``fit``; an
executor with many workers (the Ray executor) then runs it as

1. **map**, one task per shard: ``fit_map(batch, row)`` for every batch of the shard (the stage's
   ``needs`` and fed columns, as ``fit`` gets them; ``row``: the batch's first row in the shard),
   giving the batch's rows for the reduce step (with the integer column ``fit_key``) and its
   *side* output (what the finish needs of every document in lake order: MinHash keeps document
   metadata and shingle sets there; ``None`` when nothing). The rows are split into partitions
   by key (``split``);
2. **reduce**, one task per partition: ``fit_reduce(frames)`` over that partition's rows from every
   shard, as (lake position of the shard's first row, rows) in lake order (shard by shard, rows
   in order), so "first in lake order" rules hold and rows can be numbered in the lake;
3. **finish**, once, where the artifact folder is: ``fit_finish(parts, sides, documents, dir)``
   writes the artifact from the reduced partitions (an iterator, in partition order, of the
   non-empty ones) and the side outputs (an iterator over shards in lake order of (lake position
   of its first row, its batches' side outputs)), and returns the fit's metrics.

The contract: ``fit_finish`` over the reduce per partition of the map over every shard writes the
same files and metrics as ``fit`` over the same shards (a stage's ``seconds`` timings aside), for
any number of partitions (the stage writes nothing in partition order).

A nightly update (``PartitionedIncrementalFit``) is the same three steps over the new shards only,
then ``fit_finish_incremental`` on top of the earlier artifact; a stage whose reduce needs the
earlier artifact too (MinHash: the earlier band index of its bucket partitions) offers
``fit_reduce_incremental(previous, frames)``, where ``previous`` is the earlier artifact's folder
as a lake URL or local path (read through the storage layer: a reduce task may run on any node).
Its finish may reread earlier shards as well (``Sides.reread`` numbers the earlier shards first). Stages never know which
executor runs them; an executor that does not split (the local one) calls ``fit``.
``fit_in_one_process`` runs the three steps in one process: the reference the tests hold the
steps to, and the Ray executor's wiring of the same functions (engines/ray_fit.py).
"""
from __future__ import annotations

import collections
import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar, runtime_checkable

import polars as pl

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(items: Iterable[T], threads: int) -> Iterator[T]:
    """``items``, the next one made in a second thread while the caller works on the current one
    (for batches read from Parquet: the decode of the next batch overlaps the work on this one).
    One item waits at most. ``threads <= 1``: ``items`` as they are. An exception raised by
    ``items`` comes out here at its turn; when the caller stops early, the item being made is
    finished and dropped."""
    if threads <= 1:
        yield from items
        return
    it, end = iter(items), object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        ahead = pool.submit(next, it, end)
        while (item := ahead.result()) is not end:
            ahead = pool.submit(next, it, end)
            yield item  # type: ignore[misc]


def in_order(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn(item)`` for each item, yielded in the order of ``items``, with up to ``threads`` calls
    running at once in a thread pool (worth it where ``fn`` spends its time without the GIL:
    Parquet decode, Polars, NumPy sorts, the compiled kernels). Bounded: a call starts only when
    fewer than ``threads`` results are pending, so at most ``threads`` items are in flight, one
    more than in a serial loop at two threads. ``threads <= 1``: plain calls in this thread.
    An exception in ``fn`` is raised here when its item's turn comes; calls not yet started are
    cancelled when the consumer stops early."""
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    pending: collections.deque[Future[R]] = collections.deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fit") as pool:
        try:
            for item in items:
                if len(pending) >= threads:
                    yield pending.popleft().result()
                pending.append(pool.submit(fn, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


class Sides:
    """What a finish gets of the map step besides the reduced parts: each shard's side outputs
    (iterate: (lake position of the shard's first row, its batches' side outputs), in lake order,
    one shard fetched at a time), and ``reread``: a second pass over chosen shards, where the
    executor reads shards (``stage.fit_reread(batches, request)``, for a stage that needs more
    of a few documents than it wants to carry through the map step: MinHash's shingle sets of
    the documents in a candidate pair). ``first``: each shard's lake position.

    In a nightly update the mapped shards are the new ones; ``earlier`` gives the row counts of
    the shards the earlier artifact covers (in lake order; called only when a finish asks, since
    it may read every earlier shard's footer), and ``reread`` numbers those shards first: index
    ``i`` is earlier shard ``i``, then mapped shard ``i - len(earlier)``. ``whole()`` is the view
    over both."""

    def __init__(self, first: list[int], fetch: Callable[[int], list[Any]],
                 reread: Callable[[dict[int, Any]], Iterator[tuple[int, Any]]],
                 earlier: Callable[[], Sequence[int]] | None = None):
        self.first, self._fetch, self._reread, self._earlier = first, fetch, reread, earlier

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        for i, start in enumerate(self.first):
            yield start, self._fetch(i)

    def reread(self, requests: dict[int, Any]) -> Iterator[tuple[int, Any]]:
        """(shard index, ``fit_reread`` of that shard and its request) for each request, in shard order."""
        return self._reread(requests)

    def earlier_rows(self) -> list[int]:
        """Row counts of the earlier shards (none in a fit over every shard)."""
        return list(self._earlier()) if self._earlier else []

    def whole(self) -> Sides:
        """The earlier shards then the mapped ones as one lake (for ``reread`` and ``first``: each
        shard's position among all their rows); its side outputs are the mapped shards' alone."""
        rows = self.earlier_rows()
        if not rows:
            return self
        done = sum(rows)
        return Sides([*starts(rows), *(done + f for f in self.first)],
                     lambda i: [] if i < len(rows) else self._fetch(i - len(rows)), self._reread)


@runtime_checkable
class PartitionedFit(Protocol):
    fit_key: str  # the integer column of fit_map's rows that decides their partition

    def fit_map(self, batch: pl.DataFrame, row: int) -> tuple[pl.DataFrame, Any]:
        """One batch of a shard (its first row is row ``row`` of the shard) -> its rows for the
        reduce step (with ``fit_key``), in batch order, and its side output for the finish."""
        ...

    def fit_reduce(self, frames: list[tuple[int, pl.DataFrame]]) -> Any:
        """One partition's rows, as (lake position of the shard's first row, rows) in lake order
        (never empty) -> that partition's part of the artifact."""
        ...

    def fit_finish(self, parts: Iterator[Any], sides: Sides, documents: int, artifact_dir: str) -> dict[str, Any]:
        """Write the artifact from every partition's part and every shard's side outputs;
        ``documents``: rows mapped. Returns metrics."""
        ...


@runtime_checkable
class PartitionedIncrementalFit(PartitionedFit, Protocol):
    """A partitioned fit that can also extend an earlier artifact (``fit_incremental``) the same
    way: map and reduce over the new shards only, then a finish that merges them into it."""

    def fit_finish_incremental(self, previous_dir: str, parts: Iterator[Any], sides: Sides, documents: int,
                               artifact_dir: str) -> dict[str, Any]:
        """``fit_finish`` on top of the artifact in ``previous_dir``: the files and metrics of
        ``fit_incremental`` over the same new shards."""
        ...


def split(frame: pl.DataFrame, key: str, partitions: int) -> list[pl.DataFrame]:
    """``frame``'s rows by partition (the key's 64 bits, unsigned, modulo ``partitions``), each in
    the frame's order. Pure arithmetic on the key: every map task agrees on every key's partition."""
    part = frame.get_column(key).reinterpret(signed=False) % partitions
    return [frame.filter(part == p) for p in range(partitions)]


def map_shard(stage: PartitionedFit, batches: Iterable[pl.DataFrame],
              partitions: int) -> tuple[list[pl.DataFrame | None], list[Any], int]:
    """One shard's batches -> its rows split into partitions (all ``None`` for a shard without
    rows), its batches' side outputs, its row count."""
    frames, sides, rows = [], [], 0
    for batch in batches:
        mapped, side = stage.fit_map(batch, rows)
        frames.append(mapped)
        sides.append(side)
        rows += batch.height
    if not any(f.height for f in frames):
        return [None] * partitions, sides, rows
    return list(split(pl.concat(frames), stage.fit_key, partitions)), sides, rows


def starts(rows: Sequence[int]) -> list[int]:
    """Lake position of each shard's first row, from the shards' row counts (in lake order)."""
    return [0, *itertools.accumulate(rows)][:len(rows)]


def reduce_partition(stage: PartitionedFit, first_rows: Sequence[int], frames: Sequence[pl.DataFrame | None],
                     previous: str | None = None) -> Any:
    """One partition's rows from every shard (in lake order; ``first_rows``: each shard's lake
    position) -> its part, or ``None`` when no shard has rows in it. ``previous``: the earlier
    artifact of a nightly update (lake URL or local folder), for a stage that reduces against it."""
    rows = [(s, f) for s, f in zip(first_rows, frames) if f is not None and f.height]
    if not rows:
        return None
    if previous is not None and hasattr(stage, "fit_reduce_incremental"):
        return stage.fit_reduce_incremental(previous, rows)
    return stage.fit_reduce(rows)


def finish(stage: PartitionedFit, parts: Iterator[Any], sides: Sides, documents: int, artifact_dir: str,
           previous_dir: str | None = None) -> dict[str, Any]:
    """``fit_finish``, or ``fit_finish_incremental`` on top of ``previous_dir`` when given."""
    if previous_dir is None:
        return stage.fit_finish(parts, sides, documents, artifact_dir)
    assert isinstance(stage, PartitionedIncrementalFit)
    return stage.fit_finish_incremental(previous_dir, parts, sides, documents, artifact_dir)


Batches = Callable[[], Iterable[pl.DataFrame]]


def fit_in_one_process(stage: PartitionedFit, shards: Sequence[Batches], partitions: int, artifact_dir: str,
                       previous_dir: str | None = None, earlier: Sequence[Batches] = ()) -> dict[str, Any]:
    """The three steps in this process, in order (``shards``: a callable per shard giving its
    batches): what an executor distributes, run where a test can compare it with ``fit`` (or
    with ``fit_incremental`` on top of ``previous_dir``, ``earlier``: the shards it covers)."""
    mapped = [map_shard(stage, batches(), partitions) for batches in shards]
    first = starts([rows for _, _, rows in mapped])
    parts = (reduce_partition(stage, first, [split_[p] for split_, _, _ in mapped], previous_dir)
             for p in range(partitions))
    every = [*earlier, *shards]

    def reread(requests: dict[int, Any]) -> Iterator[tuple[int, Any]]:
        for i, request in sorted(requests.items()):
            yield i, stage.fit_reread(every[i](), request)  # type: ignore[attr-defined]

    sides = Sides(first, lambda i: mapped[i][1], reread,
                  lambda: [sum(b.height for b in batches()) for batches in earlier])
    return finish(stage, (p for p in parts if p is not None), sides, sum(rows for _, _, rows in mapped), artifact_dir,
                  previous_dir)
