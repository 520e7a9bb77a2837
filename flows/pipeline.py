"""The ``curate`` Prefect flow: ingest -> configured stages -> release -> catalog.

Each step is a Prefect task with retries; all of them are idempotent (outputs keyed by config,
version and input, written atomically), so a retry or a re-run after a crash redoes only what
is missing. Without ``PREFECT_API_URL`` Prefect starts a temporary local server for the run.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from engines import storage
from engines.executor import LocalExecutor, ShardTask, make_executor
from engines.stage import GlobalStage, Stage, StageContext, stage_class
from flows.ingest_plan import plan_source_ingest
from flows.registry import load_stages
from flows.run_report import flow_run_name, publish_artifacts, record_timing, write_report
from flows.validate import validate_pipeline
from readers.ingest import IngestFileTask, ingest_file
from schemas.config import PipelineConfig, SourceConfig, load_config, stable_hash
from schemas.documents import DOCUMENT
from warehouse.catalog import Catalog, now
from warehouse.lake import Lake
from warehouse.release import StageInfo, build_release
from warehouse.selection import parse_selection
from warehouse.supersede import superseded_rows


def code_version() -> str:
    try:
        return version("curate")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class RunContext:
    cfg: PipelineConfig
    config_path: str
    lake: Lake
    catalog: Catalog
    executor: LocalExecutor
    run_id: str
    code_version: str
    # The effective key of each stage that ran (global stages add their fit id).
    keys: dict[str, str] = field(default_factory=dict)
    # Sources to ingest afresh (`curate run --reingest`).
    reingest: frozenset[str] = frozenset()


@dataclass
class ConfiguredStage:
    name: str
    stage: Stage
    sources: list[str] | None
    # (column seen by the stage, earlier stage that writes it, that stage's column name)
    feeds: list[tuple[str, str, str]]


def configure_stages(cfg: PipelineConfig) -> list[ConfiguredStage]:
    """Instantiate the YAML's stages; a column a stage needs that an earlier stage writes (say
    ``lang`` from language ID) is fed from that stage's annotations."""
    load_stages()
    out: list[ConfiguredStage] = []
    writers: dict[str, str] = {}
    written: dict[str, set[str]] = {}
    for sc in cfg.stages:
        cls = stage_class(sc.kind)
        try:
            params = cls.Params.model_validate(sc.params)
        except Exception as e:
            raise ValueError(f"stages[{sc.name}].params: {e}") from None
        stage = cls(params)
        stage.base_dir = cfg.base_dir
        feeds: list[tuple[str, str, str]] = []
        for col in stage.needs:
            if col in sc.inputs:
                up, _, up_col = sc.inputs[col].partition(".")
                if up_col not in written.get(up, set()):
                    raise ValueError(f"stages[{sc.name}].inputs.{col}: no earlier stage {up!r} writing {up_col!r}")
                feeds.append((col, up, up_col))
            elif col in writers:
                feeds.append((col, writers[col], col))
        missing = [c for c in stage.needs if c not in DOCUMENT.names and c not in {f[0] for f in feeds}]
        if missing:
            raise ValueError(f"stages[{sc.name}] ({sc.kind}) needs {missing}: no document column or earlier stage "
                             "provides them (name one with stages[].inputs)")
        for src in sc.sources or []:
            if src not in {s.name for s in cfg.sources}:
                raise ValueError(f"stages[{sc.name}].sources names unknown source {src!r}")
        out.append(ConfiguredStage(sc.name, stage, sc.sources, feeds))
        for col in stage.writes():
            writers[col] = sc.name
        written[sc.name] = set(stage.writes())
    return out


def fit_global(ctx: RunContext, cs: ConfiguredStage, key: str, tasks: list[ShardTask]) -> tuple[str, str]:
    """Fit a global stage once per (config, input shards); returns (effective key, artifact dir).

    The artifact folder is written under a temporary name and renamed when complete, so a crash
    mid-fit leaves nothing that a re-run would mistake for a finished fit.
    """
    raw = [t.raw_path for t in tasks]
    fit_id = stable_hash([p[len(ctx.lake.root):] for p in raw])[:8]
    key = f"{key}-fit{fit_id}"
    art = ctx.lake.artifact_dir(key)
    started, t0, fitted = now(), time.perf_counter(), storage.exists(f"{art}/_fit.json")
    if not fitted:
        fs, art_p = storage.fs_and_path(art)
        tmp = f"{art_p}.tmp-{uuid.uuid4().hex[:6]}"
        fs.makedirs(tmp, exist_ok=True)
        metrics = ctx.executor.fit(cs.stage, tasks, tmp)  # type: ignore[arg-type]
        with fs.open(f"{tmp}/_fit.json", "w") as f:
            json.dump({"stage": cs.name, "key": key, "shards": len(raw), "metrics": metrics}, f, default=str)
        fs.mv(tmp, art_p, recursive=True)
        ctx.catalog.insert("artifacts", [{"stage": cs.name, "stage_key": key, "path": art, "run_id": ctx.run_id,
                                          "metrics": json.dumps(metrics, default=str), "created_at": now()}])
        ctx.catalog.load_artifact_tables(cs.name, key, art)  # a fit's catalog/*.parquet, e.g. semantic_groups
    record_timing(ctx, cs.name, "fit", started, time.perf_counter() - t0, key=key, kind=cs.stage.kind,
                  status="skipped" if fitted else "computed", shards=len(tasks))
    return key, art


def plan_ingest(ctx: RunContext, source: SourceConfig) -> list[IngestFileTask]:
    """The input files of a source that no live ingest has (by fingerprint: file and reader
    config), superseding earlier ingests of the same files (flows.ingest_plan)."""
    return plan_source_ingest(ctx.cfg, ctx.lake, source, ctx.run_id, ctx.code_version,
                              reingest=source.name in ctx.reingest, warn=get_run_logger().warning)


@task(name="ingest", task_run_name="ingest-{source.name}", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def ingest_source(ctx: RunContext, source: SourceConfig) -> dict[str, Any]:
    log = get_run_logger()
    tasks = plan_ingest(ctx, source)
    if not tasks:
        log.info("source %s: no new input files since the last run", source.name)
        return {"source": source.name, "files": 0, "rows_in": 0, "rows_written": 0, "rows_quarantined": 0}
    results = list(ctx.executor.map(ingest_file, tasks, desc=f"ingest {source.name}"))
    recorded = ctx.catalog.ingested_keys(source.name)
    for r in sorted(results, key=lambda r: r.file_index):
        if (r.fingerprint, r.ingest_run) in recorded:
            continue
        ctx.catalog.insert("ingested_files", [{
            "source": r.source, "path": r.file, "fingerprint": r.fingerprint, "size": r.bytes_read,
            "ingest_run": r.ingest_run, "run_id": ctx.run_id, "rows_in": r.rows_in, "rows_written": r.rows_written,
            "rows_quarantined": r.rows_quarantined, "seconds": r.seconds, "ingested_at": now()}])
        ctx.catalog.insert("shards", [{
            "path": p["path"], "source": r.source, "ingest_run": r.ingest_run, "input_file": r.file,
            "rows": p["rows"], "text_bytes": p["text_bytes"], "run_id": ctx.run_id, "created_at": now()} for p in r.parts])
        if r.quarantine_file:
            ctx.catalog.load_quarantine_file(r.quarantine_file)
        ctx.catalog.insert("superseded_ingests", superseded_rows([r], ctx.run_id, now()))
    summary = {"source": source.name, "files": len(results), "rows_in": sum(r.rows_in for r in results),
               "rows_written": sum(r.rows_written for r in results),
               "rows_quarantined": sum(r.rows_quarantined for r in results),
               "mb_read": round(sum(r.bytes_read for r in results) / 1e6, 2)}
    log.info("ingested %s", summary)
    return summary


@task(name="stage", task_run_name="{cs.name}", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def run_stage(ctx: RunContext, cs: ConfiguredStage) -> dict[str, Any]:
    log = get_run_logger()
    sources = [s.name for s in ctx.cfg.sources if cs.sources is None or s.name in cs.sources]
    raw_all = ctx.lake.shards_by_age(sources)
    # A stage's key covers the keys of the stages it reads from, so upstream changes propagate.
    cs.stage.upstream = {col: f"{ctx.keys[up]}:{up_col}" for col, up, up_col in cs.feeds}
    key = cs.stage.key(cs.name)
    feeds = {raw: tuple((col, ctx.lake.annotation_path(ctx.keys[up], raw), up_col) for col, up, up_col in cs.feeds)
             for _, raw in raw_all}
    sctx = StageContext(cache_dir=f"{ctx.lake.root}/cache")
    if isinstance(cs.stage, GlobalStage):
        fit_tasks = [ShardTask(src, raw, "", feeds[raw]) for src, raw in raw_all]
        key, sctx.artifact_dir = fit_global(ctx, cs, key, fit_tasks)
    ctx.keys[cs.name] = key
    tasks = [ShardTask(source=src, raw_path=raw, out_path=ctx.lake.annotation_path(key, raw), inputs=feeds[raw])
             for src, raw in raw_all]
    started, t0 = now(), time.perf_counter()
    results = ctx.executor.run_stage(cs.name, cs.stage, tasks, sctx)
    failed = [r for r in results if r.status == "failed"]
    if failed:  # one more try for shards that failed as a whole (e.g. a worker died)
        retry = {r.task.raw_path for r in failed}
        again = ctx.executor.run_stage(cs.name, cs.stage, [r.task for r in failed], sctx)
        results = [r for r in results if r.task.raw_path not in retry] + again
    computed = [r for r in results if r.status == "computed"]
    record_timing(ctx, cs.name, "apply", started, time.perf_counter() - t0, key=key, kind=cs.stage.kind,
                  status="computed" if computed else "skipped", shards=len(computed), rows=sum(r.rows for r in computed))
    at = now()
    ctx.catalog.insert("stage_runs", [{
        "run_id": ctx.run_id, "stage": cs.name, "stage_key": key, "kind": cs.stage.kind,
        "version": cs.stage.version, "source": r.task.source, "shard": r.task.raw_path, "status": r.status,
        "rows": r.rows, "row_errors": r.row_errors, "seconds": r.seconds, "error": r.error, "recorded_at": at} for r in results])
    for r in results:
        if r.status == "computed" and r.row_errors:
            ctx.catalog.load_stage_errors(ctx.run_id, r.task.source, cs.name, r.task.out_path, r.task.raw_path)
    if cs.stage.kind == "perplexity":
        p = cs.stage.params
        ctx.catalog.record_bpb_matrix(ctx.run_id, cs.name, key, ctx.lake.root, [m.name for m in p.models], p.group_by)  # type: ignore[attr-defined]
    counts = {s: sum(r.status == s for r in results) for s in ("computed", "skipped", "failed")}
    for r in results:
        if r.status == "failed":
            log.error("stage %s failed on %s: %s", cs.name, r.task.raw_path, r.error)
    log.info("stage %s (%s): %s", cs.name, key, counts)
    return {"stage": cs.name, "key": key, **counts, "row_errors": sum(r.row_errors for r in results)}


def release_planner(cfg: PipelineConfig, columns: dict[str, set[str]]) -> tuple[Any, tuple[str, ...]]:
    """The planner of a release (mixture, curriculum, shuffle), or None for lake order.

    Validates the ``release.mixture``/``curriculum``/``anneal`` blocks and the difficulty
    column they name, so a mistake is reported before any work starts."""
    rel = cfg.release
    if rel.mixture is None and rel.curriculum is None and rel.order == "ingest":
        return None, ()
    from planning.release_plan import make_planner
    results = None
    if rel.mixture and rel.mixture.get("results"):
        path = cfg.resolve(rel.mixture["results"])
        results = pl.read_csv(path) if path.endswith(".csv") else pl.read_parquet(path)
    wanted: list[str] = [str(c["column"]) for c in (rel.curriculum, rel.anneal) if c and c.get("column")]
    if rel.mixture and rel.mixture.get("group_by"):  # plan over an annotation's values (e.g. topics)
        wanted.append(str(rel.mixture["group_by"]))
    known = {f"{st}.{c}" for st, cols in columns.items() for c in cols}
    for col in wanted:
        if col not in known:
            raise ValueError(f"release column {col!r} (curriculum/anneal column or mixture.group_by) is not "
                             f"written by any stage; columns available: {sorted(known)}")
    try:
        planner = make_planner(rel.mixture, rel.curriculum, rel.anneal, rel.seed, results)
    except ValueError as e:
        raise ValueError(f"release: {e}") from None
    return planner, tuple(dict.fromkeys(wanted))


@task(name="release", task_run_name="release-{ctx.cfg.release.name}", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def release(ctx: RunContext, stages: list[ConfiguredStage]) -> dict[str, Any]:
    infos = [StageInfo(cs.name, ctx.keys[cs.name], list(cs.stage.writes()), cs.sources) for cs in stages]
    ingest_q = {s.name: sum(m["rows_quarantined"] for m in ctx.lake.ingest_markers(s.name)) for s in ctx.cfg.sources}
    planner, plan_cols = release_planner(ctx.cfg, {cs.name: set(cs.stage.writes()) for cs in stages})
    started, t0 = now(), time.perf_counter()
    manifest, created = build_release(ctx.cfg, ctx.lake, infos, ctx.run_id, ctx.code_version, ingest_q,
                                      planner=planner, plan_columns=plan_cols)
    record_timing(ctx, "release", "write", started, time.perf_counter() - t0, status="computed" if created else "skipped")
    path = ctx.lake.release_dir(manifest["name"], manifest["version"])
    ctx.catalog.record_release(manifest, ctx.run_id, path)
    get_run_logger().info("release %s/%s %s: %s rows, %s tokens, %s shards", manifest["name"], manifest["version"],
                          "written" if created else "unchanged (same inputs as an existing release)",
                          manifest["totals"]["rows"], manifest["totals"]["tokens"], len(manifest["shards"]))
    return {"name": manifest["name"], "version": manifest["version"], "created": created, "path": path,
            **manifest["totals"], "shards": len(manifest["shards"])}


@flow(name="curate", flow_run_name=flow_run_name, log_prints=True)
def curate_flow(config_path: str, workers: int | None = None, reingest: list[str] | None = None) -> dict[str, Any]:
    """Run a pipeline file end to end and return a summary (also stored in the catalog)."""
    cfg = load_config(config_path)
    if workers is not None:
        cfg.executor.workers = workers
    stages = configure_stages(cfg)
    # Fail before any work if the selection names a stage or column that does not exist.
    parse_selection(cfg.release.select, {cs.name: set(cs.stage.writes()) for cs in stages})
    release_planner(cfg, {cs.name: set(cs.stage.writes()) for cs in stages})
    lake = Lake(cfg.lake_path)
    storage.fs_and_path(lake.root)[0].makedirs(storage.fs_and_path(lake.root)[1], exist_ok=True)
    catalog = Catalog(lake.catalog_path)
    run_id = f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    try:
        from prefect.runtime import flow_run
        prefect_id = str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - the id is informative only
        prefect_id = None
    catalog.start_run(run_id, cfg.name, str(Path(config_path).resolve()), cfg.config_hash(), code_version(), prefect_id)
    executor = make_executor(cfg.executor, show_progress=os.environ.get("CURATE_PROGRESS", "1") != "0")
    ctx = RunContext(cfg, config_path, lake, catalog, executor, run_id, code_version(), reingest=frozenset(reingest or ()))
    try:
        ingested = [ingest_source(ctx, s) for s in cfg.sources]
        staged = [run_stage(ctx, cs) for cs in stages]
        rel = release(ctx, stages)
        catalog.refresh_views(lake.root, dict(ctx.keys))
        report = write_report(ctx, stages, rel)
        catalog.finish_run(run_id, "completed", (rel["name"], rel["version"]))
        summary = {"run_id": run_id, "lake": lake.root, "ingest": ingested, "stages": staged, "release": rel,
                   "report": report}
        publish_artifacts(ctx, summary)
        return summary
    except BaseException as e:
        catalog.finish_run(run_id, "failed", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        executor.close()


def run_pipeline(config_path: str, workers: int | None = None, reingest: list[str] | None = None,
                 validated: bool = False) -> dict[str, Any]:
    """Validate the file (every problem at once, before Prefect starts: flows.validate), then run
    the flow. ``reingest``: sources to ingest afresh. ``validated``: the caller already checked."""
    if not validated:
        validate_pipeline(config_path, reingest or ()).raise_for_errors()
    return curate_flow(config_path=str(Path(config_path).resolve()), workers=workers, reingest=list(reingest or ()))
