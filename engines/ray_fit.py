"""A global fit as many Ray tasks, for stages that offer it (``engines.partitioned_fit``).

One **map** task per shard (read the shard from the lake, ``fit_map`` its batches, split the rows
into ``partitions`` by key), one **reduce** task per partition (its rows from every map task, in
shard order, numbered in the lake from the map tasks' row counts, through ``fit_reduce``), then
``fit_finish`` in the driver, which writes the artifact into the folder the storage layer staged
for it there. The map outputs travel through Ray's object store, never through the driver; the
driver fetches the reduced parts one at a time, then each shard's side output one at a time (for
exact dedup: one row per distinct hash, and nothing; for MinHash dedup: the band index and the
candidate pairs, and the document metadata), then the results of any second pass the finish asks
for (``Sides.reread``: one task per shard; MinHash's shingle sets of the documents in a candidate
pair), so it holds one of them at a time besides what the stage's finish keeps. Cost: the shards
are read in parallel on every node.

A map or reduce task whose worker dies is retried by Ray; past its retries the fit fails, as the
one-task fit does.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

from engines import storage
from engines.executor import ShardTask, shard_batches
from engines.partitioned_fit import PartitionedFit, Sides, finish, map_shard, reduce_partition, starts
from engines.stage import GlobalStage, StageContext
from engines.storage_dirs import lake_url


def _map_shard(stage: Any, task: ShardTask, ctx: StageContext, batch_rows: int, partitions: int) -> list[Any]:
    """One shard -> its rows split into partitions (``None`` for a partition without rows), its
    side outputs, then its row count (separate return values: each goes where it is needed)."""
    stage.bind(ctx)
    parts, sides, rows = map_shard(stage, (b for _, b in shard_batches(stage, task, batch_rows)), partitions)
    return [*parts, sides, rows]


def _reduce(stage: Any, ctx: StageContext, previous: str | None, shards: int, *args: Any) -> Any:
    """One partition: ``args`` is every shard's row count, then its rows of this partition (in shard order)."""
    stage.bind(ctx)
    return reduce_partition(stage, starts(args[:shards]), args[shards:], previous)


def _reread(stage: Any, task: ShardTask, ctx: StageContext, batch_rows: int, request: Any) -> Any:
    """A second pass over one shard for the finish (``Sides.reread``)."""
    stage.bind(ctx)
    return stage.fit_reread((b for _, b in shard_batches(stage, task, batch_rows)), request)


def partitioned_fit(ray: Any, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str, ctx: StageContext,
                    batch_rows: int, partitions: int, options: dict[str, Any], retries: int,
                    previous_dir: str | None = None, earlier: Sequence[ShardTask] = ()) -> tuple[dict[str, Any], str]:
    """Run ``stage``'s fit as map, reduce and finish (see the module docstring); returns its metrics
    and a line for the run log. ``options``: each task's Ray reservation. With ``previous_dir`` (a
    local folder: the driver's copy) the finish extends that earlier artifact
    (``fit_finish_incremental``: ``tasks`` are the new shards, ``earlier`` the ones it covers);
    the reduce tasks read its lake copy (``storage_dirs.lake_url``), wherever they run."""
    assert isinstance(stage, PartitionedFit)
    t0 = time.perf_counter()
    stage_ref = ray.put(stage)
    mapper = ray.remote(_map_shard).options(num_returns=partitions + 2, max_retries=retries, **options)
    reducer = ray.remote(_reduce).options(max_retries=retries, **options)
    maps = [mapper.remote(stage_ref, t, ctx, batch_rows, partitions) for t in tasks]
    counts = [m[partitions + 1] for m in maps]
    previous = lake_url(previous_dir) if previous_dir else None
    reduced = [reducer.remote(stage_ref, ctx, previous, len(maps), *counts, *[m[p] for m in maps])
               for p in range(partitions)]
    rows = ray.get(counts)
    first = starts(rows)

    def parts() -> Iterator[Any]:
        for ref in reduced:
            part = ray.get(ref)
            if part is not None:
                yield part

    every = [*earlier, *tasks]  # Sides.reread numbers the earlier shards first

    def reread(requests: dict[int, Any]) -> Iterator[tuple[int, Any]]:
        rereader = ray.remote(_reread).options(max_retries=retries, **options)
        refs = [(i, rereader.remote(stage_ref, every[i], ctx, batch_rows, request))
                for i, request in sorted(requests.items())]
        for i, ref in refs:
            yield i, ray.get(ref)

    stage.bind(ctx)
    sides = Sides(first, lambda i: ray.get(maps[i][partitions]), reread,
                  lambda: [storage.parquet_rows(t.raw_path) for t in earlier])
    metrics = finish(stage, parts(), sides, sum(rows), artifact_dir, previous_dir)
    what = "incremental fit" if previous_dir else "fit"
    line = (f"{what} of {stage.kind} over {len(tasks)} shards: {len(tasks)} map tasks, {partitions} partitions, "
            f"{time.perf_counter() - t0:.1f} s on Ray")
    return metrics, line
