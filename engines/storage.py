"""Filesystem helpers: fsspec paths, atomic writes, Parquet sizes. Local and remote alike."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def fs_and_path(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def exists(url: str) -> bool:
    fs, path = fs_and_path(url)
    return fs.exists(path)


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


@contextmanager
def atomic_path(url: str) -> Iterator[str]:
    """Yield a temporary sibling path; on success move it onto ``url`` in one rename.

    Readers never see a half-written file: either the old state or the complete new file.
    On failure the temporary file is removed and the exception propagates.
    """
    fs, path = fs_and_path(url)
    fs.makedirs(parent(path), exist_ok=True)
    tmp = f"{parent(path)}/.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.rsplit('/', 1)[-1]}"
    try:
        yield tmp
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def parquet_writer(path: str, schema: pa.Schema) -> pq.ParquetWriter:
    """The one Parquet writer configuration of the lake: zstd, statistics, no dictionary on text."""
    fs, p = fs_and_path(path)
    return pq.ParquetWriter(
        p,
        schema,
        filesystem=fs,
        compression="zstd",
        compression_level=1,  # measured: ~10% larger than level 3 on text, and faster to write
        use_dictionary=[f.name for f in schema if not pa.types.is_large_string(f.type) and f.name != "id"],
        write_statistics=True,
        # Without page checksums a corrupted page can read back as wrong text with no error.
        write_page_checksum=True,
    )


def write_table_atomic(url: str, table: pa.Table) -> None:
    with atomic_path(url) as tmp:
        w = parquet_writer(tmp, table.schema)
        w.write_table(table)
        w.close()


def parquet_rows(url: str) -> int:
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob (local or URL), returned in the same protocol as given."""
    fs, path = fs_and_path(pattern)
    found = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    if "://" in pattern:
        proto = pattern.split("://", 1)[0]
        return [f"{proto}://{p}" if "://" not in p else p for p in found]
    return found
