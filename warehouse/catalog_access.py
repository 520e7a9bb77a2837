"""Opening the DuckDB catalog file while other processes use it.

DuckDB lets one process write a database file, or several read it, never both: a read-write
open takes an exclusive file lock, a read-only open a shared one, and the loser gets
``IOException: Could not set lock on file ...``. Measured with DuckDB 2.0.1: a reader that
opens while the run writes fails at once, and so does the run's write while a reader is open.
So both sides retry with backoff: the run's connections last one insert (milliseconds), so a
reader (``curate stats``, ``sql``, ``releases``) gets in between them; a run waits for a reader
that holds the file (a long ``curate sql`` query) up to ``CURATE_CATALOG_WAIT_S`` (default
600 s). Nobody sees the lock traceback: a reader that cannot get in within
``CURATE_CATALOG_READ_WAIT_S`` (default 30 s) gets ``CatalogBusy``, a one-line message.

A file that DuckDB cannot read at all raises ``CatalogDamaged``, whose message says to run
``curate catalog rebuild`` (the catalog is rebuilt from the lake).
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import duckdb

from warehouse.errors import LakeError

log = logging.getLogger("curate.catalog")


class CatalogBusy(LakeError):
    """The catalog stayed locked by another process for longer than we wait."""

    exit_code = 75


class CatalogDamaged(LakeError):
    """The catalog file exists but DuckDB cannot open it."""


def _is_lock_conflict(e: duckdb.Error) -> bool:
    msg = str(e)
    return "Could not set lock" in msg or "Conflicting lock" in msg


def open_catalog(path: str, read_only: bool, wait_s: float | None = None,
                 config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect`` that waits out other processes' locks and names a damaged file.

    ``wait_s`` defaults to ``CURATE_CATALOG_READ_WAIT_S`` (30 s) for readers and
    ``CURATE_CATALOG_WAIT_S`` (600 s) for the writer."""
    if wait_s is None:
        wait_s = float(os.environ.get("CURATE_CATALOG_READ_WAIT_S" if read_only else "CURATE_CATALOG_WAIT_S",
                                      30 if read_only else 600))
    t0 = time.monotonic()
    delay, warned = 0.02, False
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=config or {})
        except duckdb.Error as e:
            if not _is_lock_conflict(e):
                if isinstance(e, duckdb.IOException | duckdb.SerializationException | duckdb.InternalException):
                    raise CatalogDamaged(
                        f"the catalog {path} cannot be opened ({str(e).splitlines()[0][:200]}). "
                        f"Rebuild it from the lake with `curate catalog rebuild --lake {_lake_of(path)}`") from None
                raise
            waited = time.monotonic() - t0
            if waited >= wait_s:
                who = "a run is writing it" if read_only else "another process is reading or writing it"
                raise CatalogBusy(f"the catalog {path} is busy ({who}) and stayed locked for {waited:.0f} s; "
                                  "try again in a moment") from None
            if not warned and waited > 5:
                log.warning("catalog %s is locked by another process; waiting up to %.0f s", path, wait_s)
                warned = True
            time.sleep(delay * (0.5 + random.random()))  # jitter: two waiters do not retry in lock step
            delay = min(delay * 1.6, 1.0)


def _lake_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else "."
