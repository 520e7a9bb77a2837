"""The result cache of model-backed stages: a re-run or a crash costs nothing already computed.

Keyed by sha256 of (model id, prompt template id and version, sampling params, document hash);
values are small JSON objects (a score, the raw reply). SQLite in WAL mode, so several worker
processes can read and write one file; a busy database is waited on, not an error. On a remote
lake the SQLite file is local to each machine and the lake holds the entries as write-once
Parquet segments (engines/storage_cache.py).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa

from engines.storage import is_local_url
from engines.storage_cache import LakeSegments, local_db_path


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class _SqliteStore:
    """A key-value table in one SQLite file in WAL mode (several worker processes read and write
    it; a busy database is waited on). Subclasses say how values are stored."""

    table = ""
    value_type = ""
    arrow_type: pa.DataType = pa.string()

    def __init__(self, path: str | Path):
        """``path``: a local file, or a URL on a remote lake (``s3://.../cache/x.sqlite``)."""
        self.url = str(path)
        self.path = local_db_path(self.url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(f"CREATE TABLE IF NOT EXISTS {self.table}(key TEXT PRIMARY KEY, value {self.value_type} NOT NULL)")
        self._lake = None if is_local_url(self.url) else LakeSegments(self.url, self.arrow_type)
        if self._lake is not None:
            self._con.execute("CREATE TABLE IF NOT EXISTS imported_segments(name TEXT PRIMARY KEY)")
            self.sync()

    def sync(self) -> int:
        """Import the lake's segments this machine has not seen (remote lakes); returns how many."""
        if self._lake is None:
            return 0
        seen = {r[0] for r in self._con.execute("SELECT name FROM imported_segments")}
        new = [n for n in self._lake.names() if n not in seen]
        for name in new:
            self._con.executemany(f"INSERT OR REPLACE INTO {self.table}(key, value) VALUES (?, ?)", self._lake.read(name))
            self._con.execute("INSERT OR IGNORE INTO imported_segments(name) VALUES (?)", (name,))
        return len(new)

    def _encode(self, value: Any) -> Any:
        return value

    def _decode(self, stored: Any) -> Any:
        return stored

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        if self._lake is not None and self._lake.due():
            self.sync()
        out: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._con.execute(
                f"SELECT key, value FROM {self.table} WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update({k: self._decode(v) for k, v in rows})
        return out

    def put_many(self, items: dict[str, Any]) -> None:
        if items:
            rows = [(k, self._encode(v)) for k, v in items.items()]
            self._con.executemany(f"INSERT OR REPLACE INTO {self.table}(key, value) VALUES (?, ?)", rows)
            if self._lake is not None:  # the lake is the truth: the segment is what other machines see
                self._con.execute("INSERT OR IGNORE INTO imported_segments(name) VALUES (?)",
                                  (self._lake.write(rows),))

    def close(self) -> None:
        self._con.close()

    def __getstate__(self) -> dict[str, Any]:  # ship the path or URL to workers, not the connection
        return {"path": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class ResultCache(_SqliteStore):
    """Small JSON results (a score, the raw reply) of model-backed stages."""

    table, value_type = "results", "TEXT"

    def _encode(self, value: Any) -> Any:
        return json.dumps(value)

    def _decode(self, stored: Any) -> Any:
        return json.loads(stored)


class VectorCache(_SqliteStore):
    """Embedding vectors by key (the ``embed`` stage: model, chunking rule, text hash), stored as
    raw bytes (a 4-byte piece count, then float32 values): 1.5 kB per 384-dimensional vector,
    where JSON would triple that and cost a parse per row."""

    table, value_type = "vectors", "BLOB"
    arrow_type = pa.binary()

    def _decode(self, stored: Any) -> Any:
        return bytes(stored)
