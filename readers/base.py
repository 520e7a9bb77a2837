"""The reader contract shared by all formats."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, TypeAlias

import fsspec
import pyarrow as pa

from schemas.config import SourceConfig

# How much of a bad record is kept in quarantine (the input file itself is never modified).
MAX_RAW_BYTES = 1 << 20
OFFSET_COLUMN = "__offset"
# Rows per table a reader yields (readers may yield fewer; a giant document gets its own table).
BATCH_ROWS = 4096
# A reader closes a table early once its text reaches this many bytes, so memory stays bounded.
BATCH_BYTES = 32 << 20


@dataclass
class Quarantined:
    """Something a reader could not turn into a row.

    file: the input path; offset: line number (JSONL), row index (Parquet/HF, first row of a bad
    row group) or byte offset (WARC, compressed streams), None if unknown; rows: how many input
    rows it stands for (1 if unknown); error: what went wrong and, where useful, what to do.
    """

    file: str
    offset: int | None
    rows: int
    error: str
    raw: bytes | None = None

    def __post_init__(self) -> None:
        if self.raw is not None and len(self.raw) > MAX_RAW_BYTES:
            self.raw = self.raw[:MAX_RAW_BYTES]


ReadItem: TypeAlias = "pa.Table | Quarantined"
Reader: TypeAlias = Callable[[str, SourceConfig], Iterator[ReadItem]]


def open_binary(path: str, compression: str | None = "infer"):
    """Open a local path or fsspec URL for reading bytes, decompressing .gz/.zst/.bz2/.xz."""
    return fsspec.open(path, "rb", compression=compression).open()


def decode_utf8(data: bytes) -> str:
    """Decode UTF-8, replacing invalid bytes with U+FFFD (documented: invalid bytes are repaired,
    not quarantined, because the rest of the document is usually fine)."""
    return data.decode("utf-8", errors="replace")
