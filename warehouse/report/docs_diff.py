"""Which documents one release added and removed compared with another, and why.

Documents are compared by id (a document repeated by a mixture counts once). A removed
document's reason is its fate in the newer release (the filter that dropped it, or "not in the
input any more"); an added document's reason is its fate in the older release (the filter that
dropped it then, or "new input"); a document kept by the selection in both but sampled by the
mixture in only one is "kept (not drawn by the mixture)". A release its gates stopped has no shards
left: its documents are those its selection kept (before any mixture sampling). Both come from the releases' fates files
(warehouse/report/fates.py), computed once per release. Cost: DuckDB set differences over the
two releases' id columns and the two fates files.
"""
from __future__ import annotations

from typing import Any

import duckdb

from warehouse.report.context import ReleaseContext
from warehouse.report.duck import files_sql, lit, rows
from warehouse.report.fates import as_matches, ensure_fates

NEW_INPUT = "new input (not in the older release's input)"
GONE = "not in the input any more"
NOT_DRAWN = "kept (not drawn by the mixture)"


def docs_diff(con: duckdb.DuckDBPyConnection, old: ReleaseContext, new: ReleaseContext, sample: int = 5,
              seed: int = 0, chars: int = 160) -> dict[str, Any]:
    """Counts of added and removed documents per source and per reason, and a seeded sample of each."""
    f_old, f_new = ensure_fates(old), ensure_fates(new)
    for name, ctx, fates in (("ids_old", old, f_old), ("ids_new", new, f_new)):
        files = ctx.shard_files
        if files:
            src = f"SELECT DISTINCT id, source FROM read_parquet({files_sql(files)})"
        elif ctx.rejected:  # its shards were deleted: the documents its selection kept
            src = f"SELECT DISTINCT id, source FROM read_parquet({lit(fates)}) WHERE fate = 'kept'"
        else:
            src = "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS source WHERE false"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {src}")
    reason = ("CASE WHEN f.id IS NULL THEN ? WHEN f.fate = 'kept' THEN ? "
              "WHEN f.fate = 'quarantined' THEN f.stage || ': quarantined' ELSE f.stage || ': ' || f.reason END")
    out: dict[str, Any] = {"old": old.ref, "new": new.ref}
    for what, mine, other, fates, none in (("added", "ids_new", "ids_old", f_old, NEW_INPUT),
                                           ("removed", "ids_old", "ids_new", f_new, GONE)):
        con.execute(f"""CREATE OR REPLACE TEMP TABLE d AS
            SELECT a.id, a.source, {reason} AS why, f.fate
            FROM (SELECT * FROM {mine} EXCEPT SELECT * FROM {other}) a
            LEFT JOIN (SELECT DISTINCT ON (id) * FROM read_parquet({lit(fates)}) ORDER BY id, raw, "row") f USING (id)""", [none, NOT_DRAWN])
        out[what] = {
            "documents": int(con.execute("SELECT count(*) FROM d").fetchall()[0][0]),
            "per_source": dict(con.execute("SELECT source, count(*) FROM d GROUP BY 1 ORDER BY 1").fetchall()),
            "per_reason": [{"reason": r, "documents": int(n)} for r, n in con.execute(
                "SELECT why, count(*) FROM d GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()],
        }
        picks = rows(con, "SELECT id, source, why FROM d ORDER BY md5(? || ':' || id) LIMIT ?", [str(seed), sample])
        out[what]["sample"] = _with_text(con, picks, new if what == "added" else old, chars)
    return out


def _with_text(con: duckdb.DuckDBPyConnection, picks: list[dict[str, Any]], ctx: ReleaseContext,
               chars: int) -> list[dict[str, Any]]:
    """The picked documents with their first characters (read from the raw shards via the fates file)."""
    if not picks:
        return []
    fates = ensure_fates(ctx)
    where = rows(con, f"SELECT id, source, raw, \"row\" FROM read_parquet({lit(fates)}) WHERE id IN (SELECT unnest(?))",
                 [[p["id"] for p in picks]])
    texts = {m.id: m.text for m in as_matches([{**w, "fate": "", "stage": None, "reason": None} for w in where], chars)}
    return [{**p, "text": texts.get(p["id"], "")} for p in picks]
