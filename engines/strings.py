"""A string column as compiled kernels take it: one UTF-8 byte buffer and int64 offsets."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

# A string of at most this many bytes lives inside its 16-byte view (Arrow's string_view layout).
_INLINE = 12


def arrow_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes and the n + 1 int64 offsets of one Arrow string or binary array, as NumPy views of
    its buffers: no copy of the bytes for (large_)string and (large_)binary (32-bit offsets are
    widened, a copy of the offsets only); other types (e.g. string_view) are cast to large_string
    first. Null rows keep whatever span their offsets give (empty for Arrow's builders). The bytes
    are never empty, so they always have an address for a kernel."""
    t = arr.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        arr = arr.cast(pa.large_string())
    width = 8 if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type) else 4
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64 if width == 8 else np.int32, count=len(arr) + 1,
                            offset=arr.offset * width).astype(np.int64, copy=False)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else np.zeros(1, np.uint8)
    return data, offsets


def contiguous_view_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(bytes, offsets) of a string_view array without nulls whose strings lie back to back, in row
    order, in its single data buffer, as a view of that buffer (no copy); None for any other layout.

    That is the layout Polars holds right after it reads Arrow strings (its views point into the
    Arrow buffer it was given), so a batch read from Parquet reaches the kernels without the copy
    of every text that converting it back to ``large_string`` costs. Every string is checked, not
    assumed: a long one (over 12 bytes) must point exactly at its place in the run, and a short one,
    stored inside its view, must equal the buffer's bytes at its place. Cost: O(rows), no O(bytes).
    """
    n = len(arr)
    bufs = arr.buffers()
    if not n or arr.null_count or len(bufs) != 3 or bufs[2] is None or not bufs[2].size:
        return None
    raw = np.frombuffer(bufs[1], dtype=np.uint8, count=16 * n, offset=16 * arr.offset).reshape(n, 16)
    words = raw.view(np.uint32)  # per row: length, prefix, buffer index, offset
    lengths = words[:, 0].astype(np.int64)
    long = lengths > _INLINE
    if not long.any():
        return None
    ends = np.cumsum(lengths)
    first = int(np.argmax(long))
    base = int(words[first, 3]) - int(ends[first] - lengths[first])  # where row 0 starts in the run
    data = np.frombuffer(bufs[2], dtype=np.uint8)
    if base < 0 or base + int(ends[-1]) > data.size:
        return None
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = base
    offsets[1:] = base + ends
    starts = offsets[:-1]
    if (words[long, 2] != 0).any() or (words[long, 3].astype(np.int64) != starts[long]).any():
        return None
    short = ~long & (lengths > 0)
    if short.any():
        cols = np.arange(_INLINE)
        where = np.minimum(starts[short, None] + cols, data.size - 1)
        used = cols < lengths[short, None]
        if (np.where(used, data[where], 0) != np.where(used, raw[short, 4:4 + _INLINE], 0)).any():
            return None
    return data, offsets


def string_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and the n + 1 int64 offsets of a string column (nulls as ""). No copy of the bytes
    when the column still holds the Arrow strings Polars was given (``contiguous_view_buffers``) or
    is one chunk of large strings; otherwise one copy."""
    if not texts.null_count() and texts.dtype == pl.String:
        view = texts.to_arrow(compat_level=pl.CompatLevel.newest())
        if isinstance(view, pa.ChunkedArray) and view.num_chunks == 1:
            view = view.chunk(0)
        if isinstance(view, pa.Array) and pa.types.is_string_view(view.type):
            got = contiguous_view_buffers(view)
            if got is not None:
                return got
    arr = texts.fill_null("").to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arrow_buffers(arr.cast(pa.large_string()))
