"""The read-only SQL door of ``curate sql``: queries can read the catalog and the lake, nothing else.

Two locks, each enough for most escapes, together for all of them (tested in tests/test_sql_door.py):

1. **One read-only statement.** DuckDB's own parser (``duckdb.extract_statements``) classifies
   the text; only a single ``SELECT`` (which covers ``WITH``, ``FROM ...``, ``VALUES``,
   ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``) or an ``EXPLAIN`` of one is run. ``COPY``, ``ATTACH``,
   ``USE``, ``INSTALL``/``LOAD``, ``SET``/``RESET``, ``PRAGMA``, ``CALL``, ``CREATE``/``DROP``/
   ``INSERT``/``UPDATE``/``DELETE``, ``EXPORT`` ... are refused before DuckDB runs anything.
2. **A sandboxed connection.** The catalog is opened ``read_only``; extension auto-install and
   auto-load are off; ``allowed_directories`` is the lake's ``raw/``, ``annotations/`` and
   ``releases/`` folders (what the ``documents``, ``ann_<stage>`` and ``release_shards`` views
   read); then ``enable_external_access=false`` and ``lock_configuration=true``, so no query can
   read ``/etc/passwd``, reach the network, or undo the settings.

Measured with DuckDB 2.0.1: the allowed folders let ``COPY ... TO`` write inside them, which is
why (1) is needed as well; DuckDB itself refuses ``read_text``/``read_csv``/``glob`` outside them,
``LOAD``, and any ``SET`` once the configuration is locked.

For a lake on object storage, ``allowed_directories`` takes the same folders as
``s3://bucket/lake/raw/`` prefixes, and the lake's fsspec filesystem is registered before the
configuration is locked (engines/storage_duckdb.py; tests/test_s3_lake.py reads release shards on
S3 through the door, and is refused a prefix outside them).
"""
from __future__ import annotations

import re
from typing import Any

import duckdb

from engines.storage_duckdb import register_lake
from warehouse.catalog_access import open_catalog
from warehouse.catalog_upgrade import upgrade
from warehouse.errors import LakeError

ALLOWED = "SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN"
READABLE = ("raw", "annotations", "releases")
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?", re.IGNORECASE)


class QueryRefused(LakeError):
    """A query that ``curate sql`` does not run (it could write or read outside the lake)."""

    exit_code = 2


class QueryInvalid(LakeError):
    """A query DuckDB cannot parse."""


def checked_statement(sql: str) -> str:
    """The one read-only statement in ``sql``; raises ``QueryRefused`` for anything else."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryInvalid(f"cannot parse the query: {str(e).splitlines()[0]}") from None
    if len(statements) != 1:
        raise QueryRefused(f"curate sql runs one statement at a time; got {len(statements)}")
    st = statements[0]
    kind = st.type.name
    if kind == "EXPLAIN":
        inner = duckdb.extract_statements(_EXPLAIN.sub("", st.query, count=1))
        if len(inner) != 1 or inner[0].type.name != "SELECT":
            raise QueryRefused("curate sql explains only read-only queries (EXPLAIN SELECT ...)")
    elif kind != "SELECT":
        word = st.query.strip().split(None, 1)[0].upper() if st.query.strip() else kind
        hint = ("to take data out use `curate sql --json` or `curate export`" if kind in ("COPY", "EXPORT")
                else "the catalog is written only by curate's own commands")
        raise QueryRefused(f"curate sql is read-only: {word} statements are refused (allowed: {ALLOWED}); {hint}")
    return st.query


def sandboxed_connection(catalog_path: str, lake_root: str) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the catalog that can read only the lake's data folders."""
    con = open_catalog(catalog_path, read_only=True,
                       config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    register_lake(con, lake_root)  # a remote lake is read through fsspec, registered before the lock
    upgrade(con, read_only=True)  # a catalog an older curate wrote: today's columns (a temporary view)
    folders = [f"{lake_root.rstrip('/')}/{d}/" for d in READABLE]
    con.execute("SET allowed_directories = ?", [folders])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def readonly_query(catalog_path: str, lake_root: str, sql: str,
                   params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only query through the door; returns (column names, rows)."""
    statement = checked_statement(sql)
    con = sandboxed_connection(catalog_path, lake_root)
    try:
        cur = con.execute(statement, params or [])
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    except duckdb.PermissionException as e:
        raise QueryRefused(f"refused: {_first_line(e)} (curate sql reads only the catalog and the lake's "
                           f"{', '.join(d + '/' for d in READABLE)} folders)") from None
    except duckdb.InvalidInputException as e:
        if "read-only mode" in str(e) or "configuration has been locked" in str(e):
            raise QueryRefused(f"refused: {_first_line(e)}") from None
        raise
    finally:
        con.close()


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0]
