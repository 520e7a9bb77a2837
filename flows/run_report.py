"""What a run shows a person: stage timings in the catalog, the release report, Prefect artifacts.

- ``record_timing``: one ``stage_timings`` row per stage phase (fit, apply; release write;
  report build) with its wall time, so "which stage is slow" is one query.
- ``record_fit``: a global stage's fit in ``stage_runs`` (phase ``fit``, beside the per-shard
  ``apply`` rows) and in ``stage_timings``.
- ``report_picks``: the raw rows the report will show whatever the release decides (the largest
  duplicate clusters' members), so the release pass keeps their texts as it goes by them.
- ``write_report``: the Prefect task that writes ``<lake>/reports/NAME/VERSION/report.html``
  (warehouse/report). The report is derived from the release, so a failure to write it is
  logged and the run still completes; ``curate report`` writes it again.
- ``report_rejected``: the report of a release its gates stopped, at
  ``<lake>/reports/NAME/_rejected/VERSION/report.html``, named in the failure's message.
- ``publish_artifacts``: a markdown artifact with the run's summary tables and a link artifact
  to the report, so the Prefect UI shows what a run did.
"""
from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from warehouse.catalog import now

if TYPE_CHECKING:
    from flows.pipeline import ConfiguredStage, RunContext
    from warehouse.release import StageInfo
    from warehouse.releasing.gates import GateFailed
    from warehouse.releasing.report_texts import PickedTexts


def flow_run_name() -> str:
    """``<pipeline>-<UTC time>`` for the Prefect UI (the pipeline file's name if it does not load)."""
    from datetime import UTC

    from prefect.runtime import flow_run

    from schemas.config import load_config
    path = str((flow_run.parameters or {}).get("config_path") or "")
    try:
        name = load_config(path).name
    except Exception:  # noqa: BLE001 - only a label; the flow reports a bad file itself
        name = Path(path).stem or "curate"
    return f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def record_timing(ctx: RunContext, stage: str, phase: str, started: datetime, seconds: float, *, key: str = "",
                  kind: str = "", status: str = "computed", shards: int | None = None,
                  rows: int | None = None) -> None:
    ctx.catalog.insert("stage_timings", [{
        "run_id": ctx.run_id, "stage": stage, "stage_key": key, "kind": kind, "phase": phase, "status": status,
        "shards": shards, "rows": rows, "seconds": round(seconds, 4), "started_at": started}])


def record_fit(ctx: RunContext, cs: ConfiguredStage, key: str, started: datetime, seconds: float, status: str,
               shards: int, error: str | None = None) -> None:
    """One fit of a global stage: status ``computed`` (fitted or extended), ``reused`` (a pinned
    model) or ``failed``. Its ``stage_runs`` row has no shard (the fit reads them all)."""
    from warehouse.catalog_sync import record_stage_results
    record_timing(ctx, cs.name, "fit", started, seconds, key=key, kind=cs.stage.kind, status=status, shards=shards)
    record_stage_results(ctx.catalog, [{
        "run_id": ctx.run_id, "stage": cs.name, "stage_key": key, "kind": cs.stage.kind, "version": cs.stage.version,
        "source": None, "shard": None, "status": status, "rows": None, "row_errors": None,
        "seconds": round(seconds, 4), "error": error, "recorded_at": now(), "phase": "fit"}])


def report_picks(ctx: RunContext, stages: list[StageInfo]) -> PickedTexts | None:
    """What the release pass should keep for the report: the texts of the documents its duplicates
    section shows (``warehouse.report.sections.shown_duplicates``, from the annotation files), so
    the report does not decode a row group of a raw shard per document again. None when no stage
    writes ``survivor_id``, or when the annotations cannot be read here (the report then reads the
    texts itself, as before, and says what is wrong). Cost: the section's DuckDB queries (~0.1 s
    at 200,000 documents)."""
    if not any("survivor_id" in s.columns for s in stages):
        return None
    from schemas.derived import source_names
    from warehouse.releasing.report_texts import PickedTexts
    from warehouse.report import duck, sections
    from warehouse.report.context import ReleaseContext
    root = ctx.lake.root
    raw = [p[len(root) + 1:] for s in source_names(ctx.cfg) for p in ctx.lake.raw_shards(s)]  # as build_release
    release = ReleaseContext(ctx.lake, {"selection": ctx.cfg.release.select, "inputs": {"raw_shards": raw}}, stages)
    try:
        with duck.connect(root) as con:
            return PickedTexts(sections.shown_duplicates(release, con))
    except Exception as e:  # noqa: BLE001 - only a shortcut for the report, which reads the texts itself
        get_run_logger().warning("the report will read its duplicate examples from the raw shards (%s: %s)",
                                 type(e).__name__, e)
        return None


@task(name="report", task_run_name="report-{rel[name]}", retries=0, cache_policy=NONE)
def write_report(ctx: RunContext, stages: list[ConfiguredStage], rel: dict[str, Any]) -> dict[str, Any]:
    """Write the release's report (if it is not there yet); returns its path and size, or the error."""
    from engines import storage
    from warehouse.release import StageInfo
    from warehouse.report import build_report
    from warehouse.report.context import REPORT_FILE, report_dir
    log = get_run_logger()
    rejected = bool(rel.get("rejected"))
    path = f"{report_dir(ctx.lake, rel['name'], rel['version'], rejected)}/{REPORT_FILE}"
    if not rel["created"] and storage.exists(path):
        return {"path": path, "written": False}
    infos = [StageInfo(cs.name, ctx.keys[cs.name], list(cs.stage.writes()), cs.sources) for cs in stages]
    started, t0 = now(), time.perf_counter()
    with ctx.catalog.held():  # one catalog connection for the report's timings section and its own timing row
        try:
            rep = build_report(ctx.lake, rel["name"], rel["version"], stages=infos, code_version=ctx.code_version,
                               rejected=rejected, texts=ctx.picked.texts if ctx.picked else None)
        except Exception as e:  # noqa: BLE001 - the release stands without its report
            log.error("the report of %s/%s could not be written (%s: %s); write it with `curate report %s/%s`",
                      rel["name"], rel["version"], type(e).__name__, e, rel["name"], rel["version"])
            return {"path": None, "error": f"{type(e).__name__}: {e}"}
        record_timing(ctx, "report", "build", started, time.perf_counter() - t0)
    log.info("report: %s (%s KB)", rep.path, rep.bytes // 1024)
    return {"path": rep.path, "bytes": rep.bytes, "written": True}


def report_rejected(ctx: RunContext, stages: list[ConfiguredStage], failure: GateFailed) -> GateFailed:
    """A release its gates stopped still gets its report (marked REJECTED, failed gates first), at
    ``<lake>/reports/NAME/_rejected/VERSION/report.html``: that is when a person needs to look. The
    failure's message names it, and a Prefect artifact links it; returns the failure to raise."""
    got = write_report(ctx, stages, {"name": failure.name, "version": failure.version, "created": True,
                                     "rejected": True})
    failure.with_report(got.get("path"))
    try:
        _publish_rejected(ctx, failure)
    except Exception as e:  # noqa: BLE001 - the run fails for its gates, not for its artifacts
        get_run_logger().warning("could not publish the Prefect artifacts of this run: %s: %s", type(e).__name__, e)
    return failure


def _publish_rejected(ctx: RunContext, failure: GateFailed) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact
    ref = f"{failure.name}/{failure.version}"
    fails = [c for c in failure.report.get("checks") or [] if c.get("outcome") == "fail"]
    lines = [f"# REJECTED: release {ref} was not published", "", "| gate | source | message |", "|---|---|---|"]
    lines += [f"| {c.get('gate')} | {c.get('source') or ''} | {str(c.get('message')).replace('|', '/')} |" for c in fails]
    lines += ["", f"Record: `{failure.record}`", f"Report: `{failure.report_path or 'not written (see the log)'}`"]
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(ctx.cfg.name, "summary"),
                             description=f"curate run {ctx.run_id}: release {ref} REJECTED by its gates")
    if failure.report_path:
        create_link_artifact(link=report_link(failure.report_path), link_text=f"report {ref} (REJECTED)",
                             key=artifact_key(ctx.cfg.name, "report"),
                             description=f"The HTML report of the rejected release {ref}")


def artifact_key(pipeline: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"curate-{pipeline}-{what}".lower())).strip("-")


def report_link(path: str) -> str:
    return path if "://" in path else Path(path).resolve().as_uri()


def publish_artifacts(ctx: RunContext, summary: dict[str, Any]) -> None:
    """The run's summary (markdown tables) and a link to its report, as Prefect artifacts of this
    flow run. A Prefect API that refuses them costs a warning, not the run."""
    try:
        _publish(ctx, summary)
    except Exception as e:  # noqa: BLE001 - artifacts describe the run; the run's results stand without them
        get_run_logger().warning("could not publish the Prefect artifacts of this run: %s: %s", type(e).__name__, e)


def _publish(ctx: RunContext, summary: dict[str, Any]) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    from warehouse.report.summary import markdown_summary, source_accounting
    rel = summary["release"]
    accounting = source_accounting(ctx.catalog, rel["name"], rel["version"])
    _, rows = ctx.catalog.query("SELECT stage, phase, seconds FROM stage_timings WHERE run_id = ?", [ctx.run_id])
    timings = [{"stage": s, "phase": p, "seconds": sec} for s, p, sec in rows]
    create_markdown_artifact(markdown=markdown_summary(summary, accounting, timings),
                             key=artifact_key(ctx.cfg.name, "summary"),
                             description=f"curate run {ctx.run_id}: release {rel['name']}/{rel['version']}")
    path = (summary.get("report") or {}).get("path")
    if path:
        create_link_artifact(link=report_link(path), link_text=f"report {rel['name']}/{rel['version']}",
                             key=artifact_key(ctx.cfg.name, "report"),
                             description=f"The HTML report of release {rel['name']}/{rel['version']}")
