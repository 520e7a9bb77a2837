"""Arrow table helpers every reader shares: UTF-8 repair, the document size limit, batching."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from readers import kernels
from readers.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    MAX_RAW_BYTES,
    OFFSET_COLUMN,
    Quarantined,
    ReadItem,
    decode_utf8,
)
from schemas.config import SourceConfig

_STRINGS = (pa.string(), pa.large_string())
_BINARIES = (pa.binary(), pa.large_binary())


def _repair_chunk(chunk: pa.Array, out_type: pa.DataType) -> pa.Array:
    """A string/binary chunk as valid UTF-8; only a chunk that fails validation pays the Python loop.
    A string chunk is checked by the compiled UTF-8 check where built (readers/kernels.py), and by
    Arrow's full validation where that says no or is missing."""
    try:
        if chunk.type in _BINARIES:
            return chunk.cast(out_type)  # the cast validates UTF-8
        if not kernels.strings_valid(chunk):
            chunk.validate(full=True)
        return chunk
    except (pa.ArrowInvalid, ValueError):
        values = chunk.cast(pa.large_binary()).to_pylist()  # a byte view never fails on bad UTF-8
        return pa.array([None if v is None else decode_utf8(v) for v in values], out_type)


def utf8_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as valid UTF-8 strings: binary is decoded, invalid bytes become U+FFFD, an all-null
    column becomes a string column. Other types are returned unchanged."""
    if pa.types.is_null(column.type):
        return column.cast(pa.string())
    if column.type in _STRINGS or column.type in _BINARIES:
        out_type = pa.large_string() if column.type in (pa.large_string(), pa.large_binary()) else pa.string()
        return pa.chunked_array([_repair_chunk(c, out_type) for c in column.chunks], out_type)
    return column


def repair_strings(table: pa.Table, text_column: str) -> pa.Table:
    """Every top-level string column valid UTF-8, and the text column a string column even if stored as binary."""
    for i, field in enumerate(table.schema):
        if field.type in _STRINGS or (field.name == text_column and (field.type in _BINARIES or pa.types.is_null(field.type))):
            table = table.set_column(i, field.name, utf8_column(table.column(i)))
    return table


def _text_bytes(table: pa.Table, text_column: str) -> np.ndarray:
    if text_column not in table.column_names or table.column(text_column).type not in _STRINGS:
        return np.zeros(table.num_rows, dtype=np.int64)
    return pc.binary_length(table.column(text_column)).fill_null(0).to_numpy().astype(np.int64)


def oversized(table: pa.Table, text_column: str, source: SourceConfig, path: str) -> tuple[pa.Table, list[Quarantined]]:
    """Split off rows whose text is over ``source.max_doc_bytes`` UTF-8 bytes, as Quarantined entries
    that keep the first MAX_RAW_BYTES of the text."""
    sizes = _text_bytes(table, text_column)
    over = sizes > source.max_doc_bytes
    if not over.any():
        return table, []
    offsets = table.column(OFFSET_COLUMN).to_numpy()
    texts = table.column(text_column)
    out = []
    for i in np.flatnonzero(over):
        head = pc.binary_slice(texts[int(i)].cast(pa.large_binary()), 0, MAX_RAW_BYTES).as_py()
        error = (f"document text is {sizes[i]:,} bytes, over the limit of {source.max_doc_bytes:,} bytes; "
                 "raise sources[].max_doc_bytes to ingest documents this large")
        out.append(Quarantined(path, int(offsets[i]), 1, error, head))
    return table.filter(pa.array(~over)), out


def batches(table: pa.Table, text_column: str) -> Iterator[pa.Table]:
    """Zero-copy slices of at most BATCH_ROWS rows and about BATCH_BYTES of text; a row larger than
    BATCH_BYTES gets a slice of its own."""
    ends = np.cumsum(_text_bytes(table, text_column))
    start = 0
    while start < table.num_rows:
        before = int(ends[start - 1]) if start else 0
        stop = int(np.searchsorted(ends, before + BATCH_BYTES, side="right"))
        stop = max(start + 1, min(stop, start + BATCH_ROWS))
        yield table.slice(start, stop - start)
        start = stop


def finish(table: pa.Table, offsets: Sequence[int] | np.ndarray | pa.Array, text_column: str, source: SourceConfig,
           path: str, utf8_valid: bool = False) -> Iterator[ReadItem]:
    """The last steps every reader shares: add ``__offset``, repair UTF-8, quarantine oversized
    documents, and yield the rest in bounded batches."""
    if table.num_rows == 0:
        return
    table = table.append_column(OFFSET_COLUMN, pa.array(offsets, pa.int64()))
    if not utf8_valid:  # a reader that knows its strings are valid UTF-8 (and text a string) skips the pass
        table = repair_strings(table, text_column)
    table, too_big = oversized(table, text_column, source, path)
    yield from too_big
    yield from batches(table, text_column)
