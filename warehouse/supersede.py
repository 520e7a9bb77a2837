"""Superseded ingests: how a re-ingest replaces an earlier ingest of the same file without
deleting it and without counting its rows twice.

An input file is ingested again when its content changed (size, modification time or ETag),
when the source's reader config changed (format, column mapping, options: a wrong
``columns.text`` fixed), or when the user asks for it (``curate run --reingest SOURCE``). The
new ingest's completion marker (``raw/<source>/<run>/_done/<file>.json``) lists, under
``supersedes``, the markers it replaces, as ``"<ingest_run>/<file_index:05d>"``. That marker is
written last and atomically, so it is the single commit point: before it exists the old ingest
counts, after it the new one does, never both and never neither.

A superseded ingest stays in the lake (its shards, annotations and quarantine rows are history
the catalog can still show: table ``superseded_ingests``) but counts nowhere: ``Lake.ingest_markers``
leaves it out, so stages, release accounting and release contents see only live ingests.
Superseding is transitive (A replaced by B replaced by C: only C counts), and reverting a config
change ingests once more rather than reviving the old ingest (the new ingest run's id covers the
markers it supersedes, so it never reuses an old run folder).
"""
from __future__ import annotations

from typing import Any


def marker_id(marker_path: str) -> str:
    """``<ingest_run>/<file_index>`` of a marker at ``.../<ingest_run>/_done/<file_index>.json``."""
    parts = marker_path.rstrip("/").split("/")
    return f"{parts[-3]}/{parts[-1].removesuffix('.json')}"


def live_markers(markers: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The markers (given as (path, marker) pairs) that no other marker in the list supersedes."""
    superseded = {s for _, m in markers for s in m.get("supersedes") or ()}
    return [m for path, m in markers if marker_id(path) not in superseded]


def superseded_rows(results: list[Any], run_id: str, recorded_at: Any) -> list[dict[str, Any]]:
    """Catalog rows (table ``superseded_ingests``) for the ingest results that replaced earlier ingests."""
    rows = []
    for r in results:
        for old in getattr(r, "supersedes", None) or ():
            old_run, _, old_index = old.partition("/")
            rows.append({"source": r.source, "path": r.file, "old_ingest_run": old_run, "old_file_index": int(old_index),
                         "new_ingest_run": r.ingest_run, "new_file_index": r.file_index, "run_id": run_id,
                         "recorded_at": recorded_at})
    return rows
