"""Keep the catalog in line with the lake, and rebuild it from the lake.

The lake is the truth (warehouse/runlog.py lists where each table's facts live). ``sync_catalog``
adds to a catalog whatever the lake holds and it lacks: run records, journal entries not yet
applied, ingest markers not yet recorded (a run killed between writing a marker and recording
it), release manifests without their catalog rows. Every run calls it at the start under the
lake lock, so holes left by a killed run are filled by the next one; ``rebuild_catalog`` runs it
into an empty catalog and swaps that in (``curate catalog rebuild``).

The flow records ingested files and stage results through ``record_ingested_file`` and
``record_stage_results`` too, so what a rebuild derives is exactly what the run recorded.

Cost: listing the lake's markers, manifests, run records and journal (no data files are read,
except quarantine files and the annotation ``_error`` column of shards with row errors when
their rows are missing).
"""
from __future__ import annotations

import bisect
import json
import os
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from engines import storage
from engines.storage_duckdb import catalog_path
from warehouse import runlog
from warehouse.catalog import Catalog, now
from warehouse.lake import Lake
from warehouse.supersede import superseded_rows


def record_ingested_file(catalog: Catalog, marker: dict[str, Any], run_id: str | None) -> bool:
    """Record one input file's ingest (its marker): ``ingested_files``, ``shards``, its
    quarantined rows and the earlier ingests it supersedes, in one transaction. False if it was
    recorded already."""
    at = marker.get("ingested_at") or now()
    with catalog.transaction(), catalog.connect() as con:
        row = con.execute("SELECT count(*) FROM ingested_files WHERE source=? AND fingerprint=? AND ingest_run=?",
                          [marker["source"], marker["fingerprint"], marker["ingest_run"]]).fetchone()
        if row and row[0]:
            return False
        Catalog.apply_rows(con, "ingested_files", [{
            "source": marker["source"], "path": marker["file"], "fingerprint": marker["fingerprint"],
            "size": marker.get("bytes_read"), "ingest_run": marker["ingest_run"], "run_id": run_id,
            "rows_in": marker["rows_in"], "rows_written": marker["rows_written"],
            "rows_quarantined": marker["rows_quarantined"], "seconds": marker.get("seconds"), "ingested_at": at}])
        parts = marker.get("parts") or []
        if parts:
            con.execute("DELETE FROM shards WHERE path IN (SELECT unnest(?))", [[p["path"] for p in parts]])
        Catalog.apply_rows(con, "shards", [{
            "path": p["path"], "source": marker["source"], "ingest_run": marker["ingest_run"], "input_file": marker["file"],
            "rows": p["rows"], "text_bytes": p["text_bytes"], "run_id": run_id, "created_at": at} for p in parts])
        if marker.get("quarantine_file") and storage.exists(marker["quarantine_file"]):
            catalog.load_quarantine_file(marker["quarantine_file"], recorded_at=at)
        Catalog.apply_rows(con, "superseded_ingests", superseded_rows([SimpleNamespace(**marker)], cast(str, run_id), at))
    return True


def record_stage_results(catalog: Catalog, rows: list[dict[str, Any]]) -> None:
    """Record a stage's ``stage_runs`` rows (journaled) and quarantine the rows it failed on."""
    with catalog.transaction():
        catalog.insert("stage_runs", rows)
        _load_stage_errors(catalog, rows)


def _load_stage_errors(catalog: Catalog, rows: list[dict[str, Any]]) -> None:
    lake = Lake(catalog.lake_root)
    for r in rows:
        if r["status"] == "computed" and r.get("row_errors"):
            ann = lake.annotation_path(r["stage_key"], r["shard"])
            if storage.exists(ann) and storage.exists(r["shard"]):
                catalog.load_stage_errors(r["run_id"], r["source"], r["stage"], ann, r["shard"],
                                          recorded_at=r["recorded_at"])


def mark_killed_runs(catalog: Catalog, current_run_id: str | None, found_by: str) -> list[str]:
    """Mark ``failed`` every run still ``running`` other than ``current_run_id``.

    Call only while holding the lake lock: then no other run can be alive."""
    with catalog.connect() as con:
        ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status='running' AND run_id IS DISTINCT FROM ? "
                                         "ORDER BY started_at", [current_run_id]).fetchall()]
    for run_id in ids:
        msg = (f"killed: the process stopped before the run finished (no heartbeat on the lake lock; "
               f"found by {found_by} at {now():%Y-%m-%d %H:%M:%S} UTC)")
        runlog.update_run(catalog.lake_root, run_id, {"status": "failed", "message": msg})
        with catalog.connect() as con:
            con.execute("UPDATE runs SET status='failed', message=? WHERE run_id=?", [msg, run_id])
    return ids


def _markers(lake_root: str) -> list[dict[str, Any]]:
    """Every readable ingest marker, part and quarantine paths re-anchored on the lake as it is now."""
    out = []
    for path in storage.glob(f"{lake_root}/raw/*/*/_done/*.json"):
        fs, p = storage.fs_and_path(path)
        try:
            with fs.open(p, "rb") as f:
                m = json.loads(f.read())
        except ValueError:
            continue  # damaged: `curate check` names it, `curate repair` re-ingests its file
        run_dir = path.rsplit("/", 2)[0]
        for part in m.get("parts") or []:
            part["path"] = f"{run_dir}/{part['path'].rsplit('/', 1)[-1]}"
        if m.get("quarantine_file"):
            m["quarantine_file"] = f"{lake_root}/quarantine/{m['quarantine_file'].split('/quarantine/', 1)[-1]}"
        out.append(m)
    return sorted(out, key=lambda m: (str(m.get("ingested_at") or ""), m["source"], m.get("file_index", 0)))


def release_manifests(lake_root: str) -> list[tuple[str, dict[str, Any]]]:
    """(release folder, manifest) of every complete release, oldest first; temporary folders are skipped."""
    out = []
    for path in storage.glob(f"{lake_root}/releases/*/*/manifest.json"):
        folder = storage.parent(path)
        if folder.rsplit("/", 1)[-1].startswith("."):
            continue
        fs, p = storage.fs_and_path(path)
        try:
            with fs.open(p, "rb") as f:
                out.append((folder, json.loads(f.read())))
        except ValueError:
            continue  # damaged: reported by `curate check`
    return sorted(out, key=lambda fm: (str(fm[1].get("created_at")), fm[1].get("name"), fm[1].get("version")))


class _RunClock:
    """Which run was writing the lake at a given time: with one writer per lake, the latest
    run started at or before it."""

    def __init__(self, runs: list[tuple[str, Any]]):
        pairs = sorted((_ts(s), r) for r, s in runs if s is not None)
        self.starts = [p[0] for p in pairs]
        self.ids = [p[1] for p in pairs]

    def at(self, when: Any) -> str | None:
        i = bisect.bisect_right(self.starts, _ts(when)) - 1
        return self.ids[i] if i >= 0 else None


def _ts(v: Any) -> float:
    if isinstance(v, datetime):
        return v.timestamp()
    try:
        d = datetime.fromisoformat(str(v))
    except ValueError:
        return 0.0
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def sync_catalog(catalog: Catalog, lake_root: str) -> dict[str, int]:
    """Add to the catalog what the lake holds and it lacks; returns counts of what was added."""
    added = {"runs": 0, "journal": 0, "ingested_files": 0, "releases": 0}
    with catalog.connect() as con:
        known_runs = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
        applied = {r[0] for r in con.execute("SELECT entry FROM _journal").fetchall()}
    for rec in runlog.read_runs(lake_root, skip=known_runs):
        with catalog.connect() as con:
            Catalog.apply_rows(con, "runs", [rec])
        added["runs"] += 1
    for name in runlog.journal_entries(lake_root):
        if name in applied:
            continue
        try:
            entry = runlog.read_journal(lake_root, name)
        except ValueError:
            continue  # a damaged entry: reported by `curate check`
        with catalog.transaction(), catalog.connect() as con:
            Catalog.apply_rows(con, entry["table"], entry["rows"], entry.get("replace"))
            if entry["table"] == "stage_runs":
                _load_stage_errors(catalog, entry["rows"])
            con.execute("INSERT INTO _journal VALUES (?, ?)", [name, now()])
        added["journal"] += 1
    with catalog.connect() as con:
        clock = _RunClock(con.execute("SELECT run_id, started_at FROM runs").fetchall())
    for m in _markers(lake_root):
        added["ingested_files"] += record_ingested_file(catalog, m, clock.at(m.get("ingested_at")))
    for folder, manifest in release_manifests(lake_root):
        if not _release_recorded(catalog, manifest):
            with catalog.transaction(), catalog.connect() as con:
                for table in ("releases", "release_sources", "drop_reasons", "release_mixture", "release_phases"):
                    con.execute(f"DELETE FROM {table} WHERE name=? AND version=?", [manifest["name"], manifest["version"]])
                catalog.record_release(manifest, manifest.get("run_id") or "", folder)
            added["releases"] += 1
    from warehouse.rewrites import sync_rewrites
    loaded = sync_rewrites(catalog, lake_root)  # a rewrite stage's candidate files (issue 15)
    if loaded:
        added["rewrite_outputs"] = loaded
    return added


def _release_recorded(catalog: Catalog, manifest: dict[str, Any]) -> bool:
    with catalog.connect() as con:
        row = con.execute("SELECT (SELECT count(*) FROM releases WHERE name=$1 AND version=$2), "
                          "(SELECT count(*) FROM release_sources WHERE name=$1 AND version=$2)",
                          [manifest["name"], manifest["version"]]).fetchone()
    assert row is not None
    return bool(row[0]) and (row[1] > 0 or not manifest.get("sources"))


def latest_stage_keys(catalog: Catalog) -> dict[str, str]:
    """Stage name -> key of the stages of the latest run that recorded any (for the ann_<stage> views)."""
    with catalog.connect() as con:
        rows = con.execute(
            "SELECT stage, arg_max(stage_key, recorded_at) FROM stage_runs WHERE run_id = "
            "(SELECT run_id FROM stage_runs ORDER BY recorded_at DESC LIMIT 1) GROUP BY stage").fetchall()
    return {s: k for s, k in rows}


def _load_artifact_tables(cat: Catalog) -> None:
    """Tables a global stage's fit left in its artifact (``catalog/*.parquet``, e.g. semantic_groups)
    come back from the artifacts the journal recorded."""
    with cat.connect() as con:
        rows = con.execute("SELECT DISTINCT stage, stage_key, path FROM artifacts WHERE path IS NOT NULL").fetchall()
    for stage, key, path in rows:
        if storage.exists(path):
            cat.load_artifact_tables(stage, key, path)


def rebuild_catalog(lake_root: str) -> dict[str, int]:
    """Build a new catalog from the lake alone and put it in place of ``<lake>/catalog.duckdb``.

    The old file (damaged or not) is kept as ``catalog.duckdb.before-rebuild``. Hold the lake
    lock while calling this. The catalog is a local DuckDB file: for a remote lake, the one on this
    machine (engines/storage_duckdb.py), built from the lake's records."""
    final = catalog_path(lake_root)
    tmp = f"{os.path.dirname(final)}/.tmp-rebuild-{uuid.uuid4().hex[:8]}-catalog.duckdb"
    try:
        cat = Catalog(tmp, journal=False, lake_root=lake_root)
        cat.init()
        added = sync_catalog(cat, lake_root)
        _load_artifact_tables(cat)
        cat.refresh_views(lake_root, latest_stage_keys(cat))
        for suffix in ("", ".wal"):
            if os.path.exists(final + suffix):
                os.replace(final + suffix, f"{final}.before-rebuild{suffix}")
        os.replace(tmp, final)
    finally:
        for leftover in (tmp, tmp + ".wal"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return added
