"""The lake's own copy of what only the catalog would otherwise know.

Losing ``catalog.duckdb`` must lose nothing, so every fact the catalog holds is also in the lake:

- tables derived from lake files (``LAKE_DERIVED``) are rebuilt from those files: ingest
  markers (``ingested_files``, ``shards``, ``superseded_ingests``), quarantine files (``quarantine``), release
  manifests (``releases`` and its per-source tables) and run records (``runs``);
- run records: ``<lake>/runs/<run_id>.json`` holds a run's catalog row, written when it starts
  and rewritten when it ends (or is found killed);
- the journal: every other catalog insert (``stage_runs``, ``artifacts``, ``bpb_matrix`` and
  any table added later) is first written as ``<lake>/journal/<time>-<table>-<rand>.json``,
  then applied to the catalog together with a row in ``_journal`` naming the entry, in one
  transaction. A catalog missing entries (deleted, damaged, or a run killed in between)
  gets them back by replaying the journal: see warehouse/catalog_sync.py.

Cost: one small JSON object per catalog insert (a few dozen per run), written through the
storage layer, so this works on object storage as on local disk.
"""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from engines import storage

RUNS_DIR = "runs"
JOURNAL_DIR = "journal"
# Tables whose rows the catalog derives from lake files, so they are never journaled.
LAKE_DERIVED = frozenset({"runs", "ingested_files", "shards", "quarantine", "superseded_ingests", "releases",
                          "release_sources", "drop_reasons", "release_mixture", "release_phases"})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default, sort_keys=True).encode()


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)


def run_path(lake_root: str, run_id: str) -> str:
    return f"{lake_root}/{RUNS_DIR}/{run_id}.json"


def write_run(lake_root: str, row: dict[str, Any]) -> None:
    """Write (or replace) the record of one run: its ``runs`` row."""
    storage.write_bytes_atomic(run_path(lake_root, row["run_id"]), _dumps(row))


def read_run(lake_root: str, run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(run_path(lake_root, run_id)))
    except FileNotFoundError:
        return None


def update_run(lake_root: str, run_id: str, changes: dict[str, Any]) -> None:
    """Apply ``changes`` to a run's record (a run record that is missing is started from them)."""
    row = read_run(lake_root, run_id) or {"run_id": run_id}
    row.update(changes)
    write_run(lake_root, row)


def read_runs(lake_root: str, skip: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Every run record of the lake (but those whose run id is in ``skip``: not even read), oldest first."""
    rows = []
    for path in storage.glob(f"{lake_root}/{RUNS_DIR}/*.json"):
        if path.rsplit("/", 1)[-1].removesuffix(".json") in skip:
            continue
        try:
            rows.append(json.loads(storage.read_bytes(path)))
        except ValueError:
            continue  # a damaged record: `curate check` reports it
    return sorted(rows, key=lambda r: (str(r.get("started_at") or ""), r["run_id"]))


def write_journal(lake_root: str, table: str, rows: list[dict[str, Any]], replace: dict[str, Any] | None = None) -> str:
    """Write one journal entry (rows about to be inserted into ``table``); returns its name."""
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{table}-{uuid.uuid4().hex[:8]}.json"
    storage.write_bytes_atomic(f"{lake_root}/{JOURNAL_DIR}/{name}",
                               _dumps({"table": table, "rows": rows, "replace": replace}))
    return name


def journal_entries(lake_root: str) -> list[str]:
    """Names of all journal entries, in the order they were written."""
    return sorted(p.rsplit("/", 1)[-1] for p in storage.glob(f"{lake_root}/{JOURNAL_DIR}/*.json"))


def read_journal(lake_root: str, name: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(f"{lake_root}/{JOURNAL_DIR}/{name}"))
