"""DuckDB and the lake: the catalog is a local DuckDB file; the lake's Parquet files may be remote.

DuckDB reads local files itself. For a remote lake (``s3://``, ``memory://``) the lake's fsspec
filesystem is registered on the connection (``register_filesystem``), so ``read_parquet`` over
``s3://bucket/lake/releases/...`` goes through the same s3fs client, endpoint
(``AWS_ENDPOINT_URL``) and credentials as every other read of curate. DuckDB's own ``httpfs``
extension is not used: it is downloaded from DuckDB's extension server at first use, which CI and
air-gapped clusters cannot reach, and it would need the endpoint configured a second time.

A remote lake's catalog lives on the machine that runs the flow (``catalog_path``); it can be
rebuilt from the lake at any time (``curate catalog rebuild``), so losing it loses nothing.
"""
from __future__ import annotations

import os
import re

import duckdb

from engines import storage
from engines.storage_dirs import local_key, scratch_root


def register_lake(con: duckdb.DuckDBPyConnection, lake_root: str) -> None:
    """Make ``lake_root``'s files readable from ``con`` (a no-op for a local lake)."""
    if storage.is_local_url(lake_root):
        return
    fs, _ = storage.fs_and_path(lake_root)
    con.register_filesystem(fs)


def catalog_path(lake_root: str) -> str:
    """Where the DuckDB catalog of a lake lives: ``<lake>/catalog.duckdb`` on a local lake;
    ``$CURATE_CATALOG`` or ``<scratch>/catalogs/<lake url>-<hash>.duckdb`` for a remote one (the
    scratch folder is ``$CURATE_SCRATCH``, default ``~/.cache/curate/lake``)."""
    if storage.is_local_url(lake_root):
        return f"{lake_root.rstrip('/').removeprefix('file://')}/catalog.duckdb"
    if os.environ.get("CURATE_CATALOG"):
        return os.environ["CURATE_CATALOG"]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", lake_root)[:80]
    folder = scratch_root() / "catalogs"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{readable}-{local_key(lake_root)[:8]}.duckdb")
