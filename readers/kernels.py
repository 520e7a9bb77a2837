"""The ingest stage's compiled kernels (``readers/csrc/ingest.c``, built at install time) and what
runs without them.

- ``line_scan``: newlines, lines, the longest line, whether every line starts with ``{`` and
  whether the block is valid UTF-8, of a JSON Lines block, in one memchr pass that checks each
  line's UTF-8 while it is in cache (the reader's NumPy newline index and Arrow's UTF-8
  validation otherwise).
- ``strings_valid``: whether a string column's values are valid UTF-8, by the same check over its
  data buffer (AVX2 where the CPU has it) and a test that every value starts a character (Arrow's
  validation otherwise).
- ``url_hosts``: the lower-cased host of each URL for the lake's ``domain`` column, one pass over
  the URL column's Arrow buffers (the Polars regex otherwise; hosts with non-ASCII bytes always
  take it, for Unicode lower-casing).
- ``json_objects``: the lake's ``meta`` JSON (one object per row) when every field is a string
  column: string literals escaped in C and joined by Arrow (Polars' ``struct.json_encode``
  otherwise, and always for other field types).
- ``hash_ids``: the first 32 hex digits of sha256(prefix + key) for a column of keys, with the
  CPU's SHA extensions (SHA-NI; Intel Goldmont / Ice Lake and later, every AMD Zen). Elsewhere, or
  without the extension, hashlib (OpenSSL) per key: the same digests, about 0.5 us more per row.

Both give exactly what their fallbacks give (tests/test_ingest_kernels.py).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engines import native
from engines.strings import arrow_buffers

EXTENSION = "readers._ingest"
ABI = 2


def ext() -> Any:
    """The extension module, or None (not built, stale, or ``CURATE_NATIVE=0``)."""
    return native.load(EXTENSION, ABI)


def line_scan(block: bytes | bytearray | memoryview) -> tuple[int, int, int, bool, bool] | None:
    """(newlines, lines, longest line in bytes, every line starts with "{", the block is valid
    UTF-8) of a block, or None without the extension. A last line without a newline counts when it
    is not empty. Cost: about 0.1 ms per MiB (memchr, and 16 ASCII bytes per step of the UTF-8 check)."""
    mod = ext()
    if mod is None:
        return None
    newlines, lines, longest, simple, utf8 = mod.line_scan(block)
    return newlines, lines, longest, bool(simple), bool(utf8)


def strings_valid(chunk: pa.Array) -> bool | None:
    """True when every value of a string/binary array is valid UTF-8, False when some value may
    not be (nulls' bytes are checked too, so the caller checks again value by value), None without
    the extension. Valid as a whole, and every non-empty value starting a character, means every
    value ends one too, so each value is valid on its own. Cost: one pass over the data buffer."""
    mod = ext()
    if mod is None:
        return None
    if not len(chunk):
        return True
    chunk = chunk.cast(pa.large_binary())  # 64-bit offsets; the data buffer is not copied
    data, offsets = arrow_buffers(chunk)
    lengths = np.diff(offsets)
    if (lengths < 0).any() or offsets[0] < 0 or offsets[-1] > len(data):
        return False
    starts = offsets[:-1][lengths > 0]
    if ((data[starts] & 0xC0) == 0x80).any():  # a value starting with a continuation byte
        return False
    return bool(mod.utf8_valid(data[offsets[0]:offsets[-1]]))


def _large(column: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.Array:
    """One chunk of ``typ`` (large_string or large_binary: 64-bit offsets) without a copy of the data."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.cast(typ)


def _valid_bytes(values: pa.Array) -> np.ndarray:
    """One byte per row, 1 where ``values`` is not null (what the kernels read as the null mask)."""
    if values.null_count == 0:
        return np.ones(len(values), np.uint8)
    return values.is_valid().to_numpy(zero_copy_only=False).view(np.uint8)


def url_hosts(urls: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray] | None:
    """The lower-cased host of each URL (``^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/:?#]+)``,
    null where it does not match or the URL is null) as a large_string array, and the indices of the
    rows whose host holds non-ASCII bytes: those are null here and left to the caller (Unicode
    lower-casing). None without the extension. Cost: one pass over the URL bytes."""
    mod = ext()
    if mod is None:
        return None
    urls = _large(urls, pa.large_string())
    n = len(urls)
    data, offsets = arrow_buffers(urls)
    valid = _valid_bytes(urls)
    out = np.empty(max(1, int(offsets[-1] - offsets[0])) if n else 1, np.uint8)
    out_offsets = np.empty(n + 1, np.int64)
    state = np.empty(n, np.uint8)
    general = mod.url_hosts(data, offsets, valid, out, out_offsets, state)
    mask = state == 1
    hosts = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(out_offsets), pa.py_buffer(out[:max(1, int(out_offsets[-1]))]),
        pa.py_buffer(np.packbits(mask, bitorder="little")), n - int(np.count_nonzero(mask)))
    return hosts, (np.flatnonzero(state == 2) if general else np.empty(0, np.int64))


_STRING_TYPES = (pa.string(), pa.large_string())


def json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """Each string as a JSON string literal (escaped as Polars' and serde_json's encoders escape:
    quote, backslash, \\b \\f \\n \\r \\t, other control bytes as \\u00xx; a null as ``null``),
    as a large_string array; None without the extension. Cost: two passes over the bytes."""
    mod = ext()
    if mod is None:
        return None
    values = _large(values, pa.large_string())
    n = len(values)
    data, offsets = arrow_buffers(values)
    valid = _valid_bytes(values)
    out_offsets = np.empty(n + 1, np.int64)
    size = mod.json_strings(data, offsets, valid, None, out_offsets)
    out = np.empty(max(1, size), np.uint8)
    mod.json_strings(data, offsets, valid, out, out_offsets)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(out_offsets), pa.py_buffer(out))


def json_objects(table: pa.Table) -> pa.Array | None:
    """One JSON object per row of ``table`` (its columns as keys, in order), exactly as Polars'
    ``pl.struct(columns).struct.json_encode()`` writes it, as a large_string array; None without
    the extension or when a column is not a string column (the caller uses Polars then)."""
    if ext() is None or not table.num_columns or any(f.type not in _STRING_TYPES for f in table.schema):
        return None
    parts: list[Any] = []
    for i, name in enumerate(table.column_names):
        key = ("{" if i == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":"
        parts += [pa.scalar(key, pa.large_string()), json_strings(table.column(i))]
    parts.append(pa.scalar("}", pa.large_string()))
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


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
    keys = _large(keys, pa.large_binary())
    n = len(keys)
    mod = _sha_ni()
    if mod is None:
        return pa.array(hashlib_ids(prefix, keys.to_pylist()), pa.string())
    data, offsets = arrow_buffers(keys)
    hexes = np.empty(32 * n, np.uint8)
    mod.sha256_hex32(np.frombuffer(prefix, np.uint8), data, offsets, hexes)
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32)),
                                       pa.py_buffer(hexes))
