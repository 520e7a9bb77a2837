"""The result cache of model-backed stages: a re-run or a crash costs nothing already computed.

Keyed by sha256 of (model id, prompt template id and version, sampling params, document hash);
values are small JSON objects (a score, the raw reply). SQLite in WAL mode, so several worker
processes can read and write one file; a busy database is waited on, not an error.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class _SqliteStore:
    """A key-value table in one SQLite file in WAL mode (several worker processes read and write
    it; a busy database is waited on). Subclasses say how values are stored."""

    table = ""
    value_type = ""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute(f"CREATE TABLE IF NOT EXISTS {self.table}(key TEXT PRIMARY KEY, value {self.value_type} NOT NULL)")

    def _encode(self, value: Any) -> Any:
        return value

    def _decode(self, stored: Any) -> Any:
        return stored

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._con.execute(
                f"SELECT key, value FROM {self.table} WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update({k: self._decode(v) for k, v in rows})
        return out

    def put_many(self, items: dict[str, Any]) -> None:
        if items:
            self._con.executemany(f"INSERT OR REPLACE INTO {self.table}(key, value) VALUES (?, ?)",
                                  [(k, self._encode(v)) for k, v in items.items()])

    def close(self) -> None:
        self._con.close()

    def __getstate__(self) -> dict[str, Any]:  # ship the path to workers, not the connection
        return {"path": str(self.path)}

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

    def _decode(self, stored: Any) -> Any:
        return bytes(stored)
