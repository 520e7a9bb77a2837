"""The ``curate`` Prefect flow: ingest -> configured stages -> release -> catalog.

Each step is a Prefect task with retries; all of them are idempotent (outputs keyed by config,
version and input, written atomically), so a retry or a re-run after a crash redoes only what
is missing. Without ``PREFECT_API_URL`` Prefect starts a temporary local server for the run.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from engines import extras, storage
from engines.derived_text import chain_feed, feeds_for_source
from engines.executor import Executor, ShardTask, make_executor
from engines.stage import GlobalStage, Stage, StageContext, stage_class
from flows.ablation_step import ablate_release, check_ablation
from flows.fitting import FitRun, RefitError, fit_stage
from flows.ingest_plan import plan_source_ingest
from flows.registry import load_stages
from flows.rewrite_step import is_rewrite, run_rewrite, stage_passes
from flows.run_report import (
    flow_run_name,
    publish_artifacts,
    record_fit,
    record_timing,
    report_picks,
    report_rejected,
    write_report,
)
from flows.validate import validate_pipeline
from readers.ingest import IngestFileTask, ingest_file
from schemas.config import PipelineConfig, SourceConfig, load_config
from schemas.derived import derived_sources, derived_sources_of, source_names
from schemas.documents import DOCUMENT
from warehouse.catalog import Catalog, now
from warehouse.catalog_sync import record_ingested_file, record_stage_results
from warehouse.health import heal_on_start
from warehouse.lake import Lake
from warehouse.lock import LakeLock, lake_lock
from warehouse.release import StageInfo, build_release
from warehouse.releasing.gates import GateFailed
from warehouse.releasing.gates import warnings as gate_warnings
from warehouse.releasing.report_texts import PickedTexts
from warehouse.releasing.text import check_chain
from warehouse.selection import parse_selection


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
    executor: Executor
    run_id: str
    code_version: str
    # The effective key of each stage that ran (global stages add their fit id).
    keys: dict[str, str] = field(default_factory=dict)
    # When this run started: the lake-order time of the ingest runs it plans (Lake.record_ingest_run).
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))
    # Sources to ingest afresh (`curate run --reingest`).
    reingest: frozenset[str] = frozenset()
    # Global stages to fit again although a pinned model or index exists (`curate run --refit`).
    refit: frozenset[str] = frozenset()
    # Texts the release pass kept for the report (flows/run_report.report_picks).
    picked: PickedTexts | None = None


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
        extras.check(f"stages[{sc.name}] ({sc.kind})", stage.requirements())
        feeds: list[tuple[str, str, str]] = []
        # A rewrite stage's routing expressions name the columns they read (implied inputs).
        inputs = {**getattr(stage, "implied_inputs", dict)(), **sc.inputs}
        for col in stage.needs:
            if col in inputs:
                up, _, up_col = inputs[col].partition(".")
                if up_col not in written.get(up, set()):
                    raise ValueError(f"stages[{sc.name}].inputs.{col}: no earlier stage {up!r} writing {up_col!r}")
                up_cs = next(c for c in out if c.name == up)
                feeds.extend(chain_feed(col, up, up_col, up_cs.feeds) if up_col in up_cs.stage.text_columns
                             else [(col, up, up_col)])
            elif col in writers:
                feeds.append((col, writers[col], col))
        missing = [c for c in stage.needs if c not in DOCUMENT.names and c not in {f[0] for f in feeds}]
        if missing:
            raise ValueError(f"stages[{sc.name}] ({sc.kind}) needs {missing}: no document column or earlier stage "
                             "provides them (name one with stages[].inputs)")
        for src in sc.sources or []:
            if src not in source_names(cfg):
                raise ValueError(f"stages[{sc.name}].sources names unknown source {src!r}")
        # A rewrite stage annotates the sources it reads and the derived sources it writes.
        sources = sc.sources + derived_sources_of(cfg, sc) if sc.sources is not None else None
        out.append(ConfiguredStage(sc.name, stage, sources, feeds))
        for col in stage.writes():
            writers[col] = sc.name
        written[sc.name] = set(stage.writes())
    return out


def fit_global(ctx: RunContext, cs: ConfiguredStage, key: str, tasks: list[ShardTask]) -> tuple[str, str]:
    """Fit, reuse or extend a global stage by its fit policy (flows/fitting.py); returns
    (effective key, artifact dir). Its wall time goes to ``stage_runs`` and ``stage_timings``
    (phase ``fit``; a failed fit too)."""
    run = FitRun(ctx.lake, ctx.catalog, ctx.executor, ctx.run_id, get_run_logger())
    started, t0 = now(), time.perf_counter()
    try:
        key, art = fit_stage(run, cs.name, cs.stage, key, tasks, refit=cs.name in ctx.refit)  # type: ignore[arg-type]
    except Exception as e:
        record_fit(ctx, cs, key, started, time.perf_counter() - t0, "failed", len(tasks), f"{type(e).__name__}: {e}")
        raise
    with ctx.catalog.held():  # one catalog connection for the fit's bookkeeping
        _, fitted = ctx.catalog.query("SELECT count(*) FROM artifacts WHERE run_id = ? AND stage_key = ?",
                                      [ctx.run_id, key])
        record_fit(ctx, cs, key, started, time.perf_counter() - t0, "computed" if fitted[0][0] else "reused", len(tasks))
    return key, art


def plan_ingest(ctx: RunContext, source: SourceConfig,
                warn: Callable[[str], object] | None = None) -> list[IngestFileTask]:
    """The input files of a source that no live ingest has (by fingerprint: file and reader
    config), superseding earlier ingests of the same files (flows.ingest_plan). Warnings go to
    ``warn`` (default: the run's logger)."""
    return plan_source_ingest(ctx.cfg, ctx.lake, source, ctx.run_id, ctx.code_version,
                              reingest=source.name in ctx.reingest, warn=warn or get_run_logger().warning)


def nothing_to_ingest(ctx: RunContext, source: SourceConfig) -> dict[str, Any]:
    get_run_logger().info("source %s: no new input files since the last run", source.name)
    return {"source": source.name, "files": 0, "rows_in": 0, "rows_written": 0, "rows_quarantined": 0}


def ingest(ctx: RunContext, source: SourceConfig) -> dict[str, Any]:
    """The ingest task of a source with new input files; a source with none is answered here,
    without a Prefect task run (its API calls and logs cost ~0.1-0.3 CPU s for nothing)."""
    said: list[str] = []  # warnings (an optional source matching nothing): the task says them when it runs
    if not plan_ingest(ctx, source, warn=said.append):
        for line in said:
            get_run_logger().warning(line)
        return nothing_to_ingest(ctx, source)
    return ingest_source(ctx, source)  # plans again in the task, so a retry sees what the try wrote


@task(name="ingest", task_run_name="ingest-{source.name}", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def ingest_source(ctx: RunContext, source: SourceConfig) -> dict[str, Any]:
    log = get_run_logger()
    tasks = plan_ingest(ctx, source)
    if not tasks:
        return nothing_to_ingest(ctx, source)
    ctx.lake.record_ingest_run(source.name, tasks[0].ingest_run, ctx.started_at, ctx.run_id)
    results = list(ctx.executor.map(ingest_file, tasks, desc=f"ingest {source.name}"))
    for r in sorted(results, key=lambda r: r.file_index):
        record_ingested_file(ctx.catalog, asdict(r), ctx.run_id)
    summary = {"source": source.name, "files": len(results), "rows_in": sum(r.rows_in for r in results),
               "rows_written": sum(r.rows_written for r in results),
               "rows_quarantined": sum(r.rows_quarantined for r in results),
               "mb_read": round(sum(r.bytes_read for r in results) / 1e6, 2)}
    log.info("ingested %s", summary)
    return summary


def stage_key(cs: ConfiguredStage, keys: dict[str, str]) -> str:
    """The stage's key given the effective keys of earlier stages (also used by `curate gc`)."""
    # A stage's key covers the keys of the stages it reads from, so upstream changes propagate.
    ups: dict[str, list[str]] = {}
    for col, up, up_col in cs.feeds:
        ups.setdefault(col, []).append(f"{keys[up]}:{up_col}" if up else up_col)
    cs.stage.upstream = {col: "|".join(v) for col, v in ups.items()}
    return cs.stage.key(cs.name)


@task(name="stage", task_run_name="{cs.name}", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def run_stage(ctx: RunContext, cs: ConfiguredStage) -> dict[str, Any]:
    log = get_run_logger()
    sources = [s for s in source_names(ctx.cfg) if cs.sources is None or s in cs.sources]
    raw_all = ctx.lake.shards_by_age(sources)
    key = stage_key(cs, ctx.keys)
    runs_on = {sc.name: sc.sources for sc in ctx.cfg.stages}
    feeds = {raw: tuple((col, ctx.lake.annotation_path(ctx.keys[up], raw) if up else "", up_col) for col, up, up_col
                        in feeds_for_source(cs.feeds, {u: v is None or src in v for u, v in runs_on.items()}))
             for src, raw in raw_all}
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
    with ctx.catalog.held():  # one catalog connection for the stage's rows
        record_timing(ctx, cs.name, "apply", started, time.perf_counter() - t0, key=key, kind=cs.stage.kind,
                      status="computed" if computed else "skipped", shards=len(computed),
                      rows=sum(r.rows for r in computed))
        at = now()
        record_stage_results(ctx.catalog, [{
            "run_id": ctx.run_id, "stage": cs.name, "stage_key": key, "kind": cs.stage.kind,
            "version": cs.stage.version, "source": r.task.source, "shard": r.task.raw_path, "status": r.status,
            "rows": r.rows, "row_errors": r.row_errors, "seconds": r.seconds, "error": r.error, "recorded_at": at,
            "phase": "apply"} for r in results])
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
        planner = make_planner(rel.mixture, rel.curriculum, rel.anneal, rel.seed, results, synthetic=derived_sources(cfg))
    except ValueError as e:
        raise ValueError(f"release: {e}") from None
    return planner, tuple(dict.fromkeys(wanted))


@task(name="release", task_run_name="release-{ctx.cfg.release.name}", retries=1, retry_delay_seconds=2, cache_policy=NONE)
def release(ctx: RunContext, stages: list[ConfiguredStage], accept_gates: bool = False) -> dict[str, Any]:
    log = get_run_logger()
    infos = [StageInfo(cs.name, ctx.keys[cs.name], list(cs.stage.writes()), cs.sources) for cs in stages]
    ingest_q = {s.name: sum(m["rows_quarantined"] for m in ctx.lake.ingest_markers(s.name)) for s in ctx.cfg.sources}
    planner, plan_cols = release_planner(ctx.cfg, {cs.name: set(cs.stage.writes()) for cs in stages})
    optional = {s.name for s in ctx.cfg.sources if getattr(s, "optional", False)}
    optional |= set(derived_sources(ctx.cfg))  # a rewrite route may produce nothing: no row floor for it
    started, t0 = now(), time.perf_counter()
    ctx.picked = report_picks(ctx, infos)
    try:
        manifest, created = build_release(ctx.cfg, ctx.lake, infos, ctx.run_id, ctx.code_version, ingest_q,
                                          planner=planner, plan_columns=plan_cols, accept_gates=accept_gates,
                                          optional_sources=optional, picked=ctx.picked)
    except GateFailed as e:  # not retried: the same inputs fail the same gates
        with ctx.catalog.held():  # one catalog connection for the gates' rows and the views
            ctx.catalog.record_rejected({"name": e.name, "version": e.version, "gates": e.report}, ctx.run_id)
            ctx.catalog.refresh_views(ctx.lake.root, dict(ctx.keys))
        log.error("%s", e)
        return {"gate_failure": e}
    path = ctx.lake.release_dir(manifest["name"], manifest["version"])
    with ctx.catalog.held():  # one catalog connection for the release's rows and the views over the lake
        record_timing(ctx, "release", "write", started, time.perf_counter() - t0,
                      status="computed" if created else "skipped")
        ctx.catalog.record_release(manifest, ctx.run_id, path)
        ctx.catalog.refresh_views(ctx.lake.root, dict(ctx.keys))
    for message in gate_warnings(manifest.get("gates", {})) if created else []:
        log.warning("%s", message)
    log.info("release %s/%s %s: %s rows, %s tokens, %s shards", manifest["name"], manifest["version"],
             "written" if created else "unchanged (same inputs as an existing release)",
             manifest["totals"]["rows"], manifest["totals"]["tokens"], len(manifest["shards"]))
    return {"name": manifest["name"], "version": manifest["version"], "created": created, "path": path,
            **manifest["totals"], "shards": len(manifest["shards"]),
            "warnings": gate_warnings(manifest.get("gates", {})), "accepted": manifest.get("gates", {}).get("accepted")}


@flow(name="curate", flow_run_name=flow_run_name, log_prints=True)
def curate_flow(config_path: str, workers: int | None = None, reingest: list[str] | None = None,
                accept_gates: bool = False, wait_s: float = 0.0, refit: list[str] | None = None) -> dict[str, Any]:
    """Run a pipeline file end to end and return a summary (also stored in the catalog).

    A release stopped by its gates fails the flow (``GateFailed``) unless ``accept_gates``.
    ``refit`` names global stages to fit again over every shard although a pinned model or
    incremental index exists (flows/fitting.py)."""
    cfg = load_config(config_path)
    if workers is not None:
        cfg.executor.workers = workers
    stages = configure_stages(cfg)
    check_refit(stages, refit or [])
    # Fail before any work if the selection names a stage or column that does not exist.
    parse_selection(cfg.release.select, {cs.name: set(cs.stage.writes()) for cs in stages})
    check_release_text(cfg, stages)
    release_planner(cfg, {cs.name: set(cs.stage.writes()) for cs in stages})
    check_ablation(cfg)
    lake = Lake(cfg.lake_path)
    storage.fs_and_path(lake.root)[0].makedirs(storage.fs_and_path(lake.root)[1], exist_ok=True)
    catalog = Catalog.of_lake(lake.root)
    run_id = f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    # One writer per lake (warehouse/lock.py); `curate run` already holds it, `curate serve` takes it here.
    with lake_lock(lake.root, "run", run_id=run_id, wait_s=wait_s) as lock:
        return _run_locked(cfg, config_path, stages, lake, catalog, run_id, lock, frozenset(reingest or ()),
                           accept_gates, frozenset(refit or ()))


def _run_locked(cfg: PipelineConfig, config_path: str, stages: list[ConfiguredStage], lake: Lake, catalog: Catalog,
                run_id: str, lock: LakeLock, reingest: frozenset[str], accept_gates: bool,
                refit: frozenset[str]) -> dict[str, Any]:
    """The flow's work, holding the lake lock: heal what the lake needs, then ingest, stages, release."""
    try:
        from prefect.runtime import flow_run
        prefect_id = str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - the id is informative only
        prefect_id = None
    with catalog.held():  # one catalog connection for the healing's checks and the run's row
        for line in heal_on_start(lake.root, catalog, run_id):
            get_run_logger().warning("healing the lake: %s", line)
        catalog.start_run(run_id, cfg.name, str(Path(config_path).resolve()), cfg.config_hash(), code_version(),
                          prefect_id)
    executor = make_executor(cfg.executor, show_progress=os.environ.get("CURATE_PROGRESS", "1") != "0")
    ctx = RunContext(cfg, config_path, lake, catalog, executor, run_id, code_version(), reingest=reingest,
                     refit=refit)
    try:
        ingested = [ingest(ctx, s) for s in cfg.sources]
        lock.check()
        # After a rewrite stage, the stages before it run again over the derived shards (flows/rewrite_step.py).
        columns = {cs.name: set(cs.stage.writes()) for cs in stages}
        staged = [run_rewrite(ctx, cs, columns) if is_rewrite(cs) else run_stage(ctx, cs) for cs in stage_passes(stages)]
        lock.check()
        rel = release(ctx, stages, accept_gates)  # its catalog rows and the views over the lake too
        if "gate_failure" in rel:
            raise report_rejected(ctx, stages, rel["gate_failure"])
        report = write_report(ctx, stages, rel)
        ablation = ablate_release(lake.root, catalog, cfg, rel) if cfg.ablation else None
        summary = {"run_id": run_id, "lake": lake.root, "ingest": ingested, "stages": staged, "release": rel,
                   "report": report, "ablation": ablation}
        with catalog.held():  # one catalog connection for the run's row and its summary's queries
            catalog.finish_run(run_id, "completed", (rel["name"], rel["version"]))
            publish_artifacts(ctx, summary)
        return summary
    except BaseException as e:
        catalog.finish_run(run_id, "failed", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        executor.close()


# Modules the flow imports on first use, each 0.1-0.5 CPU s: the stage modules (load_stages),
# FastAPI's encoder (Prefect serialises the flow's parameters with it), pandas (PyArrow's
# ``pa.table`` imports it on its first call, inside the first stage), the report.
_WARM = ("fastapi.encoders", "pandas", "prefect.artifacts", "warehouse.report", "warehouse.report.summary")


def warm_imports() -> None:
    """Import what the flow would import on first use (``_WARM`` and the stage modules), so it is
    done while `curate run` waits for Prefect's server to boot (flows/commands/run_startup.py).
    A module that is not installed is skipped: the flow imports it (or not) as before."""
    import importlib

    load_stages()
    for name in _WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def run_pipeline(config_path: str, workers: int | None = None, reingest: list[str] | None = None,
                 validated: bool = False, accept_gates: bool = False, wait_s: float = 0.0,
                 on_wait: Any = None, refit: list[str] | None = None, before_flow: Any = None) -> dict[str, Any]:
    """Validate the file (every problem at once, before Prefect starts: flows.validate), take the
    lake lock (waiting up to ``wait_s`` seconds for another writer; ``LakeBusy`` names it), check
    the catalog opens, then run the flow. ``reingest``: sources to ingest afresh. ``validated``:
    the caller already checked. ``accept_gates``: publish the release even if its gates fail.
    ``refit``: global stages to fit again (``RefitError`` when one is not a global stage).
    ``before_flow``: called right before the flow starts (`curate run` waits there for the
    Prefect server it started early: flows/prefect_server.py)."""
    if not validated:
        validate_pipeline(config_path, reingest or ()).raise_for_errors()
    cfg = load_config(config_path)
    if refit:
        check_refit(configure_stages(cfg), refit)
    with lake_lock(cfg.lake_path, "run", wait_s=wait_s, on_wait=on_wait):
        if Path(Catalog.of_lake(cfg.lake_path).path).exists():
            Catalog.of_lake(cfg.lake_path).init()  # a damaged catalog is named before Prefect starts
        if before_flow is not None:
            before_flow()
        return curate_flow(config_path=str(Path(config_path).resolve()), workers=workers,
                           reingest=list(reingest or ()), accept_gates=accept_gates, refit=list(refit or ()))


def check_refit(stages: list[ConfiguredStage], names: list[str]) -> None:
    """``--refit`` must name global stages of the pipeline."""
    fitted = [cs.name for cs in stages if isinstance(cs.stage, GlobalStage)]
    for n in names:
        if n not in fitted:
            raise RefitError(f"--refit {n}: not a global stage of this pipeline; global stages: {', '.join(fitted) or 'none'}")


def check_release_text(cfg: PipelineConfig, stages: list[ConfiguredStage]) -> None:
    """``release.text`` must name a chain of derived text columns wired through ``inputs.text``."""
    reads = {cs.name: next((f"{u}.{c}" for col, u, c in cs.feeds if col == "text" and u), None) for cs in stages}
    check_chain(list(cfg.release.text), {cs.name: cs.stage.text_columns for cs in stages}, reads)
