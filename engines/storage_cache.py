"""Result caches when the lake is remote: a local SQLite file per machine, keyed Parquet on the lake as the truth.

A model-backed stage caches results by key (engines/inference/cache.py). On a local lake the cache
is one SQLite file in WAL mode under ``<lake>/cache/`` that every worker process shares. SQLite
cannot live on an object store (no locks, no partial writes), and workers of a cluster do not
share a disk, so on a remote lake (``s3://...``, ``memory://...``):

- each machine keeps a local SQLite file under the scratch folder (``$CURATE_SCRATCH`` or
  ``~/.cache/curate/lake``), named by the lake URL, shared by the worker processes there;
- every ``put_many`` also writes its entries as one new Parquet object
  ``<lake>/cache/<name>/seg-<uuid>.parquet`` (columns ``key``, ``value``): written once, never
  modified, so there is nothing to lock and a killed worker loses at most its unwritten batch;
- opening the cache (and at most once a minute while reading) imports the segments this machine
  has not imported yet, so a result computed on any node, in any earlier run, is a hit everywhere.

The lake's segments are the truth: deleting a machine's scratch folder only costs one import.
Cost: one small object per batch of fresh results (an LLM batch costs seconds to minutes of model
time; one PUT is milliseconds) and one LIST per minute per worker.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage
from engines.storage_dirs import local_key, scratch_root

REFRESH_SECONDS = 60.0


def local_db_path(url: str) -> Path:
    """Where the SQLite file of the cache ``url`` lives: itself on a local lake, the scratch folder otherwise."""
    if storage.is_local_url(url):
        return Path(storage.fs_and_path(url)[1])
    return scratch_root() / "caches" / local_key(url) / url.rsplit("/", 1)[-1]


class LakeSegments:
    """The write-once Parquet segments of one cache on a remote lake (``<cache url without .sqlite>/``)."""

    def __init__(self, cache_url: str, value_type: pa.DataType):
        stem = cache_url.rsplit(".", 1)[0] if cache_url.endswith((".sqlite", ".db")) else cache_url
        self.url = stem.rstrip("/")
        self.schema = pa.schema([("key", pa.string()), ("value", value_type)])
        self.synced_at = 0.0

    def names(self) -> list[str]:
        """The segment names on the lake now (a fresh listing, never a cached one)."""
        fs, path = storage.fs_and_path(self.url)
        fs.invalidate_cache(path)
        self.synced_at = time.monotonic()
        try:
            return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".parquet")
                          and not p.rsplit("/", 1)[-1].startswith(".tmp-"))
        except FileNotFoundError:
            return []

    def read(self, name: str) -> list[tuple[str, Any]]:
        fs, path = storage.fs_and_path(f"{self.url}/{name}")
        with fs.open(path, "rb") as f:
            t = pq.read_table(f)
        return list(zip(t.column("key").to_pylist(), t.column("value").to_pylist()))

    def write(self, items: list[tuple[str, Any]]) -> str:
        """One new segment holding ``items`` (already encoded for the value type); returns its name."""
        name = f"seg-{uuid.uuid4().hex}.parquet"
        table = pa.table({"key": pa.array([k for k, _ in items], pa.string()),
                          "value": pa.array([v for _, v in items], self.schema.field("value").type)})
        storage.write_table_atomic(f"{self.url}/{name}", table)
        return name

    def due(self) -> bool:
        return time.monotonic() - self.synced_at > REFRESH_SECONDS
