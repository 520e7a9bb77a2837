"""Catalogs written by older versions of curate, seen with today's columns.

A column added to a catalog table after catalogs were already made is listed in
``ADDED_COLUMNS`` with the value its older rows mean. ``upgrade`` runs on every catalog
connection (warehouse/catalog.py, and the read-only door of ``curate sql``):

- a writing connection adds the missing column (``ALTER TABLE ... ADD COLUMN ... DEFAULT``:
  older rows take the default, and so do rows replayed from older journal entries that lack it);
- a read-only connection cannot alter the file, so a temporary view of the same name, which
  DuckDB resolves before the table, adds the column as a constant; the file is upgraded by the
  next run (the only writer).

Cost: one ``information_schema`` query per connection; the ALTER runs once per catalog.
"""
from __future__ import annotations

import duckdb

# (table, column, type, value of the rows written before the column existed)
ADDED_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    # stage_runs had only per-shard apply rows until fit rows joined them (issue 17).
    ("stage_runs", "phase", "VARCHAR", "'apply'"),
)


def _missing(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str, str]]]:
    """Per table of the catalog file, the added columns it lacks (tables it lacks entirely are skipped)."""
    have: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_catalog = current_database() AND table_schema = 'main' "
            "AND table_name IN (SELECT unnest(?))", [sorted({t for t, *_ in ADDED_COLUMNS})]).fetchall():
        have.setdefault(table, set()).add(column)
    out: dict[str, list[tuple[str, str, str]]] = {}
    for table, column, kind, default in ADDED_COLUMNS:
        if table in have and column not in have[table]:
            out.setdefault(table, []).append((column, kind, default))
    return out


def upgrade(con: duckdb.DuckDBPyConnection, read_only: bool) -> list[str]:
    """Bring an older catalog's tables up to ``ADDED_COLUMNS``; returns ``table.column`` of what was added."""
    missing = _missing(con)
    if not missing:
        return []
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    for table, cols in missing.items():
        if read_only:
            extra = ", ".join(f"{default}::{kind} AS {_q(col)}" for col, kind, default in cols)
            con.execute(f"CREATE OR REPLACE TEMP VIEW {_q(table)} AS SELECT *, {extra} FROM {_q(db)}.main.{_q(table)}")
        else:
            for col, kind, default in cols:
                con.execute(f"ALTER TABLE {_q(table)} ADD COLUMN IF NOT EXISTS {_q(col)} {kind} DEFAULT {default}")
    return [f"{t}.{c}" for t, cols in missing.items() for c, _, _ in cols]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
