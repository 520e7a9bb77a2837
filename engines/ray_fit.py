"""A global fit as many Ray tasks, for stages that offer it (``engines.partitioned_fit``).

One **map** task per shard (read the shard from the lake, ``fit_map`` its batches, split the rows
into ``partitions`` by key), one **reduce** task per partition (its rows from every map task, in
shard order, through ``fit_reduce``), then ``fit_finish`` in the driver, which writes the artifact
into the folder the storage layer staged for it there. The map outputs travel through Ray's object
store, never through the driver; only the reduced parts (for exact dedup: one row per distinct
hash, as much as the one-task fit holds) come back to it. Cost: the shards are read in parallel on
every node; the finish is a concatenation and a sort.

A map or reduce task whose worker dies is retried by Ray; past its retries the fit fails, as the
one-task fit does.
"""
from __future__ import annotations

import time
from typing import Any

import polars as pl

from engines.executor import ShardTask, shard_batches
from engines.partitioned_fit import PartitionedFit, split
from engines.stage import GlobalStage, StageContext


def _map_shard(stage: Any, task: ShardTask, ctx: StageContext, batch_rows: int,
               partitions: int) -> list[pl.DataFrame | int | None]:
    """One shard -> its rows split into partitions (``None`` for a shard without rows), then its row count."""
    stage.bind(ctx)
    frames = [stage.fit_map(batch) for _, batch in shard_batches(stage, task, batch_rows)]
    rows = sum(f.height for f in frames)
    if not rows:
        return [*([None] * partitions), 0]
    return [*split(pl.concat(frames), stage.fit_key, partitions), rows]


def _reduce(stage: Any, ctx: StageContext, *frames: pl.DataFrame | None) -> pl.DataFrame | None:
    """One partition's rows from every shard, in shard order -> its part of the artifact."""
    stage.bind(ctx)
    rows = [f for f in frames if f is not None and f.height]
    return stage.fit_reduce(rows) if rows else None


def partitioned_fit(ray: Any, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str, ctx: StageContext,
                    batch_rows: int, partitions: int, options: dict[str, Any], retries: int) -> tuple[dict[str, Any], str]:
    """Run ``stage``'s fit as map, reduce and finish (see the module docstring); returns its metrics
    and a line for the run log. ``options``: each task's Ray reservation."""
    assert isinstance(stage, PartitionedFit)
    t0 = time.perf_counter()
    stage_ref = ray.put(stage)
    mapper = ray.remote(_map_shard).options(num_returns=partitions + 1, max_retries=retries, **options)
    reducer = ray.remote(_reduce).options(max_retries=retries, **options)
    maps = [mapper.remote(stage_ref, t, ctx, batch_rows, partitions) for t in tasks]
    reduced = [reducer.remote(stage_ref, ctx, *[m[p] for m in maps]) for p in range(partitions)]
    documents = sum(ray.get([m[partitions] for m in maps]))
    parts = [p for p in ray.get(reduced) if p is not None]
    stage.bind(ctx)
    metrics = stage.fit_finish(parts, documents, artifact_dir)
    line = (f"fit of {stage.kind} over {len(tasks)} shards: {len(tasks)} map tasks, {partitions} partitions, "
            f"{time.perf_counter() - t0:.1f} s on Ray")
    return metrics, line
