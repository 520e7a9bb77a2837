"""A string column as compiled kernels take it: one UTF-8 byte buffer and int64 offsets."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa


def string_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and the n + 1 int64 offsets of a string column (nulls as ""); no copy of the
    bytes when the column is already one chunk of large strings."""
    arr = texts.fill_null("").to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    return data, offsets
