"""The release report: one self-contained HTML page per release, at
``<lake>/reports/NAME/VERSION/report.html``.

``build_report(lake, name, version)`` gathers the numbers (warehouse/report/sections.py: the
manifest's accounting, DuckDB aggregates over annotation and release shards, the per-document
fates of warehouse/report/fates.py), renders them (page.py, static SVG plots) and writes the page
through the storage layer. Sections: accounting with a waterfall per source, drop reasons with
sampled example documents, histograms of every numeric annotation per source with the
selection's thresholds, duplicate clusters, mixture and curriculum, the diff against the parent
release, and the run's stage timings.

A release its gates stopped gets a report too (``rejected=True``): the same sections from the
record the release step kept, marked REJECTED with the failed gates first, at
``<lake>/reports/NAME/_rejected/VERSION/report.html``.

Cost: one pass over the release's raw shards the first time (the fates file), then DuckDB scans
of annotation columns and release ids; memory stays bounded by DuckDB's limit and one shard.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engines import storage
from warehouse.lake import Lake
from warehouse.release import StageInfo
from warehouse.report import duck, page, sections
from warehouse.report.context import REPORT_FILE, ReleaseContext, load_context, save_context
from warehouse.report.docs_diff import docs_diff
from warehouse.report.fates import ensure_fates
from warehouse.report.io import write_bytes


@dataclass
class Report:
    path: str
    bytes: int
    data: dict[str, Any]


def report_data(ctx: ReleaseContext, seed: int = 0, chars: int = 300, code_version: str = "",
                texts: dict[tuple[str, int], str] | None = None) -> dict[str, Any]:
    """Every number the page shows, as one JSON-able dict. ``texts``: raw texts of (raw shard,
    row) already in hand (releasing/report_texts.py), used instead of reading those rows again."""
    m = ctx.manifest
    totals = m.get("totals") or {}
    fates = ensure_fates(ctx)
    with duck.connect(ctx.lake.root) as con:
        data: dict[str, Any] = {
            "release": {"name": ctx.name, "version": ctx.version, "parent": m.get("parent"),
                        "created_at": m.get("created_at"), "pipeline": m.get("pipeline"), "run_id": m.get("run_id"),
                        "selection": ctx.selection, "rows": int(totals.get("rows", 0)),
                        "tokens": int(totals.get("tokens", 0)), "bytes": int(totals.get("bytes", 0)),
                        "shards": len(m.get("shards") or []), "notes": ctx.notes, "rejected": ctx.rejected},
            "stages": [s.name for s in ctx.stages],
            "accounting": sections.accounting(ctx),
            "waterfall": sections.waterfalls(ctx),
            "drop_reasons": sections.drop_table(ctx),
            "gates": sections.gates(ctx),
            "text_steps": sections.text_steps(ctx),
            "examples": sections.examples(ctx, con, fates, seed=seed, chars=chars, known=texts),
            "histograms": sections.histograms(ctx, con),
            "duplicates": sections.duplicates(ctx, con, known=texts),
            "mixture": sections.mixture(ctx, con),
            "curriculum": sections.curriculum(ctx, con),
            "diff": _parent_diff(ctx, con, seed),
            "timings": sections.timings(ctx),
            "seed": seed, "example_chars": chars, "lake": ctx.lake.root, "code_version": code_version,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    return data


def _parent_diff(ctx: ReleaseContext, con: Any, seed: int) -> dict[str, Any] | None:
    parent = ctx.manifest.get("parent")
    if not parent or not storage.exists(f"{ctx.lake.release_dir(ctx.name, parent)}/manifest.json"):
        return None
    old = load_context(ctx.lake, ctx.name, parent, stages=None if _has_context(ctx, parent) else ctx.stages)
    a_old, a_new = sections.accounting(old), sections.accounting(ctx)
    per = {}
    for s in sorted(set(a_old) | set(a_new)):
        o, n = a_old.get(s, {}), a_new.get(s, {})
        per[s] = {"rows_old": o.get("rows_released"), "rows_new": n.get("rows_released"),
                  "rows_delta": (n.get("rows_released") or 0) - (o.get("rows_released") or 0),
                  "tokens_old": o.get("tokens_released"), "tokens_new": n.get("tokens_released")}
    d_old = {(d["source"], d["stage"], d["reason"]): d["rows"] for d in old.manifest.get("drop_reasons") or []}
    d_new = {(d["source"], d["stage"], d["reason"]): d["rows"] for d in ctx.manifest.get("drop_reasons") or []}
    changed = [{"source": k[0], "stage": k[1], "reason": k[2], "rows_old": d_old.get(k), "rows_new": d_new.get(k)}
               for k in sorted(set(d_old) | set(d_new)) if d_old.get(k) != d_new.get(k)]
    return {"old": old.ref, "new": ctx.ref, "per_source": per, "drop_reasons": changed,
            "docs": docs_diff(con, old, ctx, seed=seed)}


def _has_context(ctx: ReleaseContext, version: str) -> bool:
    from warehouse.report.context import CONTEXT_FILE, report_dir
    return storage.exists(f"{report_dir(ctx.lake, ctx.name, version)}/{CONTEXT_FILE}")


def build_report(lake: Lake | str, name: str, version: str, stages: list[StageInfo] | None = None,
                 out: str | None = None, seed: int = 0, code_version: str = "", rejected: bool = False,
                 texts: dict[tuple[str, int], str] | None = None) -> Report:
    """Write the report of release ``name/version`` (default ``<lake>/reports/NAME/VERSION/report.html``,
    or ``out``); ``stages``: the pipeline's stages in order, when the caller knows them (else the
    saved context or the lake tells). ``rejected``: the release its gates stopped (from
    ``releases/NAME/_rejected/VERSION.json``; the page, at ``reports/NAME/_rejected/VERSION/``,
    is marked REJECTED with the failed gates at the top). ``texts``: raw texts already in hand
    (the release pass kept those the duplicates section shows: ``sections.shown_duplicates``)."""
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    ctx = load_context(lake, name, version, stages, rejected=rejected)
    if stages is not None:
        save_context(ctx)
    data = report_data(ctx, seed=seed, code_version=code_version, texts=texts)
    html = page.render(data).encode()
    path = out or f"{ctx.report_dir}/{REPORT_FILE}"
    write_bytes(path, html)
    return Report(path, len(html), data)


__all__ = ["Report", "build_report", "load_context", "report_data"]
