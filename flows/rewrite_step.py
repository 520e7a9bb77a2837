"""Wiring of ``rewrite`` stages into the flow (issue 15): plan, generate, record, annotate.

``run_rewrite`` is the Prefect task for a ``kind: rewrite`` stage: it plans the run against the
lake (rewriting/lake_plan.py), hands the shard tasks to the executor (``executor.map``: the
local process pool today, any executor offering ``map`` later), writes tombstones, records the
derived markers and candidates in the catalog, and gives every derived shard the stage's
annotation (``origin = synthetic``), so ``<stage>.keep`` and ``<stage>.origin`` exist for every
row of every source.

``stage_passes`` says in which order the flow runs the stages: each stage once, in pipeline
order, and right after a rewrite stage every stage listed before it again (their shards already
done are skipped; the derived shards are new), so later stages read every earlier stage's
columns on derived documents too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from engines import storage
from engines.derived_text import feeds_for_source
from rewriting.lake_plan import plan_rewrite
from rewriting.stage import RewriteStage, synthetic_rows
from rewriting.task import rewrite_shard, write_json_atomic
from schemas.derived import derived_sources_of
from warehouse.catalog import now
from warehouse.catalog_sync import record_stage_results
from warehouse.rewrites import record_markers
from warehouse.selection import parse_selection

if TYPE_CHECKING:
    from flows.pipeline import ConfiguredStage, RunContext


def is_rewrite(cs: ConfiguredStage) -> bool:
    return isinstance(cs.stage, RewriteStage)


def stage_passes(stages: list[ConfiguredStage]) -> list[ConfiguredStage]:
    """Every stage in order; after each rewrite stage, the stages before it again."""
    out: list[ConfiguredStage] = []
    for i, cs in enumerate(stages):
        out.append(cs)
        if is_rewrite(cs):
            out += [s for s in stages[:i] if not is_rewrite(s)]
    return out


@task(name="rewrite", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def run_rewrite(ctx: RunContext, cs: ConfiguredStage, columns: dict[str, set[str]]) -> dict[str, Any]:
    """Run one rewrite stage (``columns``: what every stage writes, for the routing expressions)."""
    log = get_run_logger()
    from flows.pipeline import stage_key
    stage: RewriteStage = cs.stage  # type: ignore[assignment]
    key = stage_key(cs, ctx.keys)
    ctx.keys[cs.name] = key
    sc = next(s for s in ctx.cfg.stages if s.name == cs.name)
    real = [s.name for s in ctx.cfg.sources]
    inputs = [s for s in real if sc.sources is None or s in sc.sources]
    parents = ctx.lake.shards_by_age(inputs)
    runs_on = {s.name: s.sources for s in ctx.cfg.stages}
    feeds = {raw: tuple((col, ctx.lake.annotation_path(ctx.keys[up], raw) if up else "", up_col) for col, up, up_col
                        in feeds_for_source(cs.feeds, {u: v is None or src in v for u, v in runs_on.items()}))
             for src, raw in parents}
    exprs = {r.route_name: parse_selection(r.when, columns).expr for r in stage.rparams.routes}
    plan = plan_rewrite(ctx.lake, stage, cs.name, key, parents, feeds, exprs, ctx.run_id, f"{ctx.lake.root}/cache",
                        ctx.cfg.executor.shard_bytes, ctx.cfg.executor.batch_rows)
    busy = [t for t in plan.tasks if t.routes]
    results = [rewrite_shard(t) for t in plan.tasks if not t.routes]  # annotation only: no model needed
    results += list(ctx.executor.map(rewrite_shard, busy, desc=f"{cs.name} ({len(busy)} shards)",
                                     resources=stage.resources()))
    # The local executor runs a lone shard (or every shard with workers: 1) in this process: let its
    # model go now, so the next model stage can have the GPU (a later rewrite makes a new one).
    from engines.inference.base import close_open_backends
    close_open_backends()
    for path, marker in plan.tombstones:
        write_json_atomic(path, marker)
    markers = [m for r in results for m in r.markers] + [{**m, "_path": p} for p, m in plan.tombstones]
    record_markers(ctx.catalog, markers, ctx.run_id)
    derived = _annotate_derived(ctx, cs, key)
    at = now()
    rows = [{"run_id": ctx.run_id, "stage": cs.name, "stage_key": key, "kind": stage.kind, "version": stage.version,
             "source": r.task.source, "shard": r.task.raw_path, "status": r.status, "rows": r.rows, "row_errors": 0,
             "seconds": r.seconds, "error": r.error, "recorded_at": at, "phase": "apply"} for r in results]
    rows += [{"run_id": ctx.run_id, "stage": cs.name, "stage_key": key, "kind": stage.kind, "version": stage.version,
              "source": src, "shard": raw, "status": "skipped", "rows": None, "row_errors": 0, "seconds": 0.0,
              "error": None, "recorded_at": at, "phase": "apply"} for src, raw in plan.done]
    record_stage_results(ctx.catalog, rows)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log.error("rewrite %s failed on %s: %s", cs.name, r.task.raw_path, r.error)
    totals: dict[str, int] = {}
    for r in results:
        for k, v in r.counts.items():
            totals[k] = totals.get(k, 0) + v
    summary = {"stage": cs.name, "key": key, "computed": len(results) - len(failed), "skipped": len(plan.done),
               "failed": len(failed), "derived_shards": derived, "retired": len(plan.tombstones), **totals}
    log.info("rewrite %s (%s): %s", cs.name, key, summary)
    return summary


def _annotate_derived(ctx: RunContext, cs: ConfiguredStage, key: str) -> int:
    """The stage's annotation (origin synthetic, keep true) for every live derived shard lacking one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engines.executor import output_schema
    sc = next(s for s in ctx.cfg.stages if s.name == cs.name)
    schema = output_schema(cs.stage)
    n = 0
    for derived in derived_sources_of(ctx.cfg, sc):
        for raw in ctx.lake.raw_shards(derived):
            out = ctx.lake.annotation_path(key, raw)
            if storage.exists(out):
                continue
            fs, p = storage.fs_and_path(raw)
            with fs.open(p, "rb") as f:
                ids = pq.read_table(f, columns=["id"]).column("id").combine_chunks()
            rows = synthetic_rows(len(ids)).to_arrow()
            arrays = [ids] + [rows.column(f.name).cast(f.type) for f in schema if f.name in rows.column_names]
            storage.write_table_atomic(out, pa.Table.from_arrays(arrays + [pa.nulls(len(ids), pa.string())], schema=schema))
            n += 1
    return n
