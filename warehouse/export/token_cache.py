"""Tokenise a release once per tokenizer, and reuse the token ids for every export format.

A release is immutable, so the token ids of its shards under one tokenizer never change. The
first tokenised export of ``NAME/VERSION`` (hf, mds, megatron or jsonl) stores, per release shard,
the ids of every document in ``<lake>/exports/NAME/VERSION/_tokens/<tokenizer key>/``; the next
format reads them instead of tokenising again. Layout::

    _tokens/<key>/tokenizer.json                      what the key stands for (``TextTokenizer.describe()``)
    _tokens/<key>/shard-000000-<sha256[:16]>.arrow    one row per document: ``ids`` (large_list<uint16|int32>)

``key`` hashes everything that decides the ids: the tokenizer file's sha256, ``append_eos``, the
end-of-text id and the id dtype. A cache file is named after its release shard and that shard's
sha256 from the manifest, so it can only be read for the bytes it was made from. Files are Arrow IPC
(uncompressed, memory-mapped on read: a hit costs a read, not a parse) written through
``engines.storage.atomic_path``: a crash leaves either no file or a complete one. A file that cannot
be read back, or whose row count differs from the shard's, is ignored and rewritten.

Cost: a miss is the tokenisation it replaces plus one write of the ids (2 bytes per token for a
vocabulary under 65,500); a hit reads those bytes. ``export.json`` does not mention the cache (the
same inputs give the same export bytes); ``export_release`` returns hits and misses.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engines import storage
from schemas.config import stable_hash
from warehouse.export.tokenize import TextTokenizer

CACHE_FOLDER = "_tokens"


def default_cache_root(release_dir: Path) -> Path | None:
    """``<lake>/exports/NAME/VERSION/_tokens`` for a release folder inside a lake
    (``<lake>/releases/NAME/VERSION``); None for a release folder elsewhere."""
    d = Path(release_dir).resolve()
    if d.parent.parent.name != "releases":
        return None
    return d.parent.parent.parent / "exports" / d.parent.name / d.name / CACHE_FOLDER


def tokenizer_key(tokenizer: TextTokenizer) -> str:
    """What decides the ids: the tokenizer file's bytes, the end-of-text rule and the dtype."""
    d = tokenizer.describe()
    return stable_hash({k: d[k] for k in ("sha256", "append_eos", "eos_id", "dtype", "library")})[:16]


class ShardTokenizer:
    """A ``TextTokenizer`` whose per-shard encodings are cached (``root`` None: no cache).

    Exposes what the writers use of a ``TextTokenizer`` (``dtype``, ``path``, ``describe()``) plus
    ``encode_shard``."""

    def __init__(self, tokenizer: TextTokenizer, root: str | Path | None):
        self.tokenizer = tokenizer
        self.dtype = tokenizer.dtype
        self.path = tokenizer.path
        self.dir = f"{root}/{tokenizer_key(tokenizer)}" if root is not None else None
        self.hits = 0
        self.misses = 0
        if self.dir is not None and not storage.exists(f"{self.dir}/tokenizer.json"):
            with storage.atomic_path(f"{self.dir}/tokenizer.json") as tmp:
                fs, p = storage.fs_and_path(tmp)
                with fs.open(p, "w") as f:
                    json.dump(tokenizer.describe(), f, indent=2, sort_keys=True)

    def describe(self) -> dict[str, Any]:
        return self.tokenizer.describe()

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer.encode(texts)

    def _file(self, entry: dict[str, Any]) -> str | None:
        if self.dir is None or not entry.get("sha256"):
            return None  # no cache, or a shard without a checksum to tie the ids to
        return f"{self.dir}/{Path(entry['file']).stem}-{entry['sha256'][:16]}.arrow"

    def encode_shard(self, entry: dict[str, Any], rows: int, texts: Sequence[str] | Callable[[], Sequence[str]]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of a release shard's documents (``entry``: its manifest entry; ``rows``: its
        row count), concatenated, and the ids per document: from the cache if this shard was
        tokenised before with this tokenizer, else ``texts`` (or what calling it returns, so a hit
        never builds the list) tokenised, and stored."""
        path = self._file(entry)
        if path is not None:
            cached = _read(path, rows, self.dtype)
            if cached is not None:
                self.hits += 1
                return cached
        flat, lens = self.tokenizer.encode(texts() if callable(texts) else texts)
        self.misses += 1
        if path is not None:
            _write(path, flat, lens)
        return flat, lens


def _read(path: str, rows: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    fs, p = storage.fs_and_path(path)
    try:
        if not fs.exists(p):
            return None
        if "://" in path:
            with fs.open(p, "rb") as f:
                table = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
        else:
            with pa.memory_map(p) as src:
                table = pa.ipc.open_file(src).read_all()
        col = table.column("ids").combine_chunks()
        if len(col) != rows or col.null_count or col.type.value_type != pa.from_numpy_dtype(dtype):
            return None
        offsets = col.offsets.to_numpy()
        flat = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
        return np.asarray(flat, dtype=dtype).copy(), np.diff(offsets).astype(np.int64)
    except (OSError, pa.ArrowException, KeyError):
        return None  # unreadable (e.g. damaged by hand): tokenise again and overwrite


def _write(path: str, flat: np.ndarray, lens: np.ndarray) -> None:
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    table = pa.table({"ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))})
    with storage.atomic_path(path) as tmp:
        fs, p = storage.fs_and_path(tmp)
        with fs.open(p, "wb") as f:
            with pa.ipc.new_file(f, table.schema) as w:
                w.write_table(table)
