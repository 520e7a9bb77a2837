"""Writes of the report's files (page, context, fates) that work on local disk and object storage.

Local disk: a temporary sibling renamed onto the name (storage.atomic_path), so a reader never
sees half a file. Object storage: the object is streamed (a multipart upload for large files) and
only appears, whole, when the upload completes; on an error the upload is aborted, so nothing is
published. (storage.atomic_path's temporary name carries no protocol, so it is not used for URLs.)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage


def _remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _write_remote(url: str, body: Callable[[IO[bytes]], object]) -> None:
    fs, path = storage.fs_and_path(url)
    f: Any = fs.open(path, "wb")
    try:
        body(f)
    except BaseException:
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()  # s3fs: abort the multipart upload; the object never appears
        f.closed = True  # not close(): closing a buffered remote file commits what was written
        raise
    f.close()


def write_bytes(url: str, data: bytes) -> None:
    storage.write_bytes_atomic(url, data)


def write_parquet(url: str, schema: pa.Schema, tables: Iterable[pa.Table]) -> None:
    """Stream ``tables`` into one Parquet file, one table in memory at a time (zstd; the lake's
    writer settings on local disk)."""
    if _remote(url):
        def body(f: IO[bytes]) -> None:
            w = pq.ParquetWriter(f, schema, compression="zstd")
            try:
                for t in tables:
                    w.write_table(t)
            finally:
                w.close()  # on an error too (into the upload that is then aborted), before the file goes
        _write_remote(url, body)
        return
    with storage.atomic_path(url) as tmp:
        w = storage.parquet_writer(tmp, schema)
        try:
            for t in tables:
                w.write_table(t)
        finally:
            w.close()


def read_rows(url: str, rows: list[int], columns: list[str] | None = None) -> dict[int, dict[str, Any]]:
    """Rows ``rows`` (0-based, any order) of one Parquet file, reading only the row groups that hold
    them (and only ``columns``): memory is a row group, not the file. Returns row -> record; rows
    past the end are absent."""
    fs, path = storage.fs_and_path(url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        starts, start = [], 0
        for g in range(pf.metadata.num_row_groups):
            starts.append(start)
            start += pf.metadata.row_group(g).num_rows
        starts.append(start)
        by_group: dict[int, list[int]] = {}
        for r in rows:
            if 0 <= r < start:
                g = next(i for i in range(len(starts) - 1) if starts[i] <= r < starts[i + 1])
                by_group.setdefault(g, []).append(r)
        found: dict[int, dict[str, Any]] = {}
        for g, wanted in by_group.items():
            t = pf.read_row_group(g, columns=columns)
            taken = t.take(pa.array([r - starts[g] for r in wanted], pa.int64())).to_pylist()
            found.update(zip(wanted, taken))
    return found
