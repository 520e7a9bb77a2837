"""A DuckDB connection that reads the lake's Parquet files, local or on object storage.

On a remote lake (``s3://...``) the lake's fsspec filesystem is registered with DuckDB, so the
same SQL streams the same files through the storage layer's credentials. Queries aggregate in
DuckDB (bounded by ``memory_limit``, spilling to a temporary folder) and return small results.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from engines import storage

# DuckDB's own cap for the report's aggregates (it spills to a temporary folder beyond it):
# lower it on a machine with less memory to spare.
MEMORY_LIMIT_ENV = "CURATE_REPORT_DUCKDB_MEMORY"


@contextmanager
def connect(lake_root: str, memory_limit: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection for the report: ``memory_limit`` (default ``$CURATE_REPORT_DUCKDB_MEMORY``
    or 1GB), two threads, a temporary spill folder removed on exit."""
    memory_limit = memory_limit or os.environ.get(MEMORY_LIMIT_ENV) or "1GB"
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory_limit.strip(), re.I):
        raise ValueError(f"{MEMORY_LIMIT_ENV}={memory_limit!r}: give a size such as 512MB or 2GB")
    con = duckdb.connect()
    tmp = tempfile.mkdtemp(prefix="curate-report-")
    try:
        con.execute(f"SET memory_limit='{memory_limit}'")
        con.execute(f"SET temp_directory='{tmp}'")
        con.execute("SET threads=2")
        if "://" in lake_root:
            con.register_filesystem(storage.fs_and_path(lake_root)[0])
        yield con
    finally:
        con.close()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def files_sql(paths: list[str]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def lit(path: str) -> str:
    """A SQL string literal of a path."""
    return "'" + path.replace("'", "''") + "'"


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def register(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, list[Any]]) -> None:
    """Register a small Python table (e.g. file -> source) under ``name``."""
    con.register(name, pa.table(columns))


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]
