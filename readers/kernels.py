"""The ingest stage's compiled kernels (``readers/csrc/ingest.c``, built at install time) and what
runs without them.

- ``line_scan``: newlines, lines, the longest line and whether every line starts with ``{`` of a
  JSON Lines block, in one memchr pass (the reader's NumPy newline index otherwise).
- ``hash_ids``: the first 32 hex digits of sha256(prefix + key) for a column of keys, with the
  CPU's SHA extensions (SHA-NI; Intel Goldmont / Ice Lake and later, every AMD Zen). Elsewhere, or
  without the extension, hashlib (OpenSSL) per key: the same digests, about 0.5 us more per row.

Both give exactly what their fallbacks give (tests/test_ingest_kernels.py).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from engines import native

EXTENSION = "readers._ingest"
ABI = 1


def ext() -> Any:
    """The extension module, or None (not built, stale, or ``CURATE_NATIVE=0``)."""
    return native.load(EXTENSION, ABI)


def line_scan(block: bytes | bytearray | memoryview) -> tuple[int, int, int, bool] | None:
    """(newlines, lines, longest line in bytes, every line starts with "{") of a block, or None
    without the extension. A last line without a newline counts when it is not empty."""
    mod = ext()
    if mod is None:
        return None
    newlines, lines, longest, simple = mod.line_scan(block)
    return newlines, lines, longest, bool(simple)


def _sha_ni() -> Any:
    mod = ext()
    return mod if mod is not None and mod.has_sha() else None


def hash_path() -> str:
    """Which code hashes document ids here: ``"sha-ni"`` or ``"hashlib"``."""
    return "sha-ni" if _sha_ni() is not None else "hashlib"


def hashlib_ids(prefix: bytes, keys: Iterable[bytes]) -> list[str]:
    """The first 32 hex digits of sha256(prefix + key) per key with hashlib: the reference, and the
    path where the CPU lacks SHA-NI. One C call per step (~0.5 us per short key); the prefix state
    is hashed once and copied for every key."""
    base = hashlib.sha256(prefix)
    out = []
    for k in keys:
        h = base.copy()
        h.update(k)
        out.append(h.hexdigest()[:32])
    return out


def hash_ids(prefix: bytes, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The first 32 hex digits of sha256(prefix + key) for each key of a string or binary column
    without nulls, as a string array."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    keys = keys.cast(pa.large_binary())
    n = len(keys)
    mod = _sha_ni()
    if mod is None:
        return pa.array(hashlib_ids(prefix, keys.to_pylist()), pa.string())
    bufs = keys.buffers()
    offsets = np.frombuffer(bufs[1], np.int64, count=n + 1, offset=keys.offset * 8)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None and n else np.zeros(1, np.uint8)
    hexes = np.empty(32 * n, np.uint8)
    mod.sha256_hex32(np.frombuffer(prefix, np.uint8), data, offsets, hexes)
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32)),
                                       pa.py_buffer(hexes))
