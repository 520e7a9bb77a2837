"""What the catalog knows of rewriting, and how it is rebuilt from the lake.

A rewrite stage's derived markers (``raw/<source>.<route>/<run>/_done/<i>.json``, ingest-shaped)
and candidate files (``.../_outputs/<i>.parquet``, schemas.derived.REWRITE_OUTPUTS) are the facts;
the catalog holds them as:

- ``ingested_files`` and ``shards`` rows for the derived source (the parent shard in ``path`` /
  ``input_file``), and ``superseded_ingests`` rows for the markers a newer one replaced;
- ``rewrite_outputs``: every candidate, kept or dropped, with its lineage (parent, prompt id and
  version, model, sampling, seed, segment span) and, when dropped, its reason and raw reply;
- views ``rewrite_summary`` (per stage, route and derived source: parents, generated, kept,
  dropped, errors, words kept, and what the latest release did with them: rows that passed the
  selection, rows and tokens released) and ``rewrite_drops`` (per reason), both counting live
  markers only.

``sync_rewrites`` loads every candidate file of the lake not yet in the catalog, so a catalog
rebuilt from the lake has them too.
"""
from __future__ import annotations

import json
from typing import Any

import duckdb

from engines import storage
from warehouse.catalog import Catalog, now

_LIVE = ("NOT EXISTS (SELECT 1 FROM superseded_ingests s WHERE s.source = o.source "
         "AND s.old_ingest_run = o.ingest_run AND s.old_file_index = o.file_index)")
VIEWS = f"""
CREATE OR REPLACE VIEW rewrite_drops AS
SELECT o.stage, o.route, o.method, o.source, o.reason, count(*) AS candidates
FROM rewrite_outputs o WHERE o.status <> 'kept' AND {_LIVE} GROUP BY ALL;
CREATE OR REPLACE VIEW rewrite_summary AS
WITH latest AS (SELECT name, version FROM releases ORDER BY created_at DESC LIMIT 1),
gen AS (
  SELECT o.stage, o.route, o.method, o.source, count(DISTINCT o.parent_id) AS parents, count(*) AS generated,
         count(*) FILTER (WHERE o.status = 'kept') AS kept, count(*) FILTER (WHERE o.status = 'dropped') AS dropped,
         count(*) FILTER (WHERE o.status = 'error') AS errors,
         coalesce(sum(o.words) FILTER (WHERE o.status = 'kept'), 0) AS words_kept,
         count(*) FILTER (WHERE o.cached) AS from_cache
  FROM rewrite_outputs o WHERE {_LIVE} GROUP BY ALL)
SELECT g.*, r.name AS release_name, r.version AS release_version, r.rows_kept AS passed_selection,
       r.rows_released, r.tokens_released
FROM gen g LEFT JOIN (SELECT rs.* FROM release_sources rs JOIN latest l USING (name, version)) r ON r.source = g.source;
"""


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(VIEWS)


def record_markers(catalog: Catalog, markers: list[dict[str, Any]], run_id: str) -> None:
    """Catalog rows for derived markers written by this run (each with its ``_path``): the
    ingest-shaped rows (``ingested_files``, ``shards``, ``superseded_ingests``) as for any ingest,
    then the marker's candidates into ``rewrite_outputs``."""
    from warehouse.catalog_sync import record_ingested_file
    for m in markers:
        record_ingested_file(catalog, {k: v for k, v in m.items() if k != "_path"}, run_id)
        outputs = outputs_path(m)
        if outputs:
            load_outputs(catalog, outputs)


def outputs_path(marker: dict[str, Any]) -> str | None:
    rel = (marker.get("rewrite") or {}).get("outputs")
    path = marker.get("_path")
    if not rel or not path:
        return None
    return f"{path.rsplit('/', 2)[0]}/{rel}"


def load_outputs(catalog: Catalog, path: str) -> None:
    with catalog.connect() as con:
        con.execute("INSERT INTO rewrite_outputs SELECT *, ? AS recorded_at FROM read_parquet(?)",
                    [now(), _local(path)])


def _local(path: str) -> str:
    fs, p = storage.fs_and_path(path)
    return path if "://" in path else p


def sync_rewrites(catalog: Catalog, lake_root: str) -> int:
    """Load the candidate files of every derived marker in the lake that the catalog lacks;
    returns how many were loaded (for ``curate catalog rebuild``)."""
    with catalog.connect() as con:
        have = {(r[0], r[1], int(r[2])) for r in con.execute(
            "SELECT DISTINCT source, ingest_run, file_index FROM rewrite_outputs").fetchall()}
    loaded = 0
    for path in storage.glob(f"{lake_root}/raw/*/*/_done/*.json"):
        fs, p = storage.fs_and_path(path)
        with fs.open(p, "r") as f:
            m = json.load(f)
        if not isinstance(m, dict) or "rewrite" not in m:
            continue
        m["_path"] = path
        out = outputs_path(m)
        if out and (m["source"], m["ingest_run"], int(m["file_index"])) not in have and storage.exists(out):
            load_outputs(catalog, out)
            loaded += 1
    return loaded
