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


class ResultCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS results(key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._con.execute(
                f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update({k: json.loads(v) for k, v in rows})
        return out

    def put_many(self, items: dict[str, Any]) -> None:
        if items:
            self._con.executemany("INSERT OR REPLACE INTO results(key, value) VALUES (?, ?)",
                                  [(k, json.dumps(v)) for k, v in items.items()])

    def close(self) -> None:
        self._con.close()

    def __getstate__(self) -> dict[str, Any]:  # ship the path to workers, not the connection
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class VectorCache:
    """Embedding vectors by key (the ``embed`` stage: model, chunking rule, text hash), stored as
    raw float32 bytes in one SQLite file (WAL, shared by worker processes like ``ResultCache``).
    1.5 kB per 384-dimensional vector; JSON would triple that and cost a parse per row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS vectors(key TEXT PRIMARY KEY, value BLOB NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self._con.execute(
                f"SELECT key, value FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update({k: bytes(v) for k, v in rows})
        return out

    def put_many(self, items: dict[str, bytes]) -> None:
        if items:
            self._con.executemany("INSERT OR REPLACE INTO vectors(key, value) VALUES (?, ?)", list(items.items()))

    def close(self) -> None:
        self._con.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]
