"""A string column as compiled kernels take it: one UTF-8 byte buffer and int64 offsets."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa


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


def string_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and the n + 1 int64 offsets of a string column (nulls as ""); no copy of the
    bytes when the column is already one chunk of large strings."""
    arr = texts.fill_null("").to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arrow_buffers(arr.cast(pa.large_string()))
