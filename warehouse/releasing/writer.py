"""Writing release shards: streamed as rows arrive, or in a planned order sorted out of core.

``ShardWriter`` cuts shards at ``shard_rows`` rows or once a shard holds ``shard_bytes`` of text,
and row groups at ``ROW_GROUP_ROWS`` rows or ``ROW_GROUP_BYTES`` of text, all counted row by row:
boundaries depend only on the ordered rows, never on how they were batched on the way, so the
same rows give byte-identical shards. Memory: one row group of text (at most ``ROW_GROUP_BYTES``
plus one document), whatever the shard size.

``write_in_order`` fetches staged rows in a planned order (mixture repeats, curriculum) with a
DuckDB join and sort under ``memory_limit``, spilling to a local scratch folder beyond it.
"""
from __future__ import annotations

import hashlib
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engines import storage
from engines.faults import fault_point
from schemas.documents import DOCUMENT

RELEASE_SCHEMA = pa.schema(list(DOCUMENT) + [pa.field("n_tokens", pa.int64())])
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 * 1024 * 1024
# DuckDB's budget for the planned-order sort; beyond it, it spills to the scratch folder.
SORT_MEMORY = "256MB"


def sha256_of(url: str) -> str:
    fs, p = storage.fs_and_path(url)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cut(text_bytes: np.ndarray, rows_left: int, bytes_left: int) -> int:
    """How many of these rows fit: up to ``rows_left``, and up to and including the row that
    reaches ``bytes_left`` (a shard always takes at least one row)."""
    n = min(len(text_bytes), rows_left)
    reached = np.nonzero(np.cumsum(text_bytes[:n]) >= bytes_left)[0]
    return int(reached[0]) + 1 if reached.size else n


class ShardWriter:
    """Release shards ``shard-000000.parquet``... under ``out_dir`` with their manifest entries."""

    def __init__(self, out_dir: str, shard_rows: int, shard_bytes: int):
        self.out_dir, self.shard_rows, self.shard_bytes = out_dir, shard_rows, shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._writer: Any = None
        self._group: list[pa.Table] = []
        self._group_rows = self._group_bytes = 0
        self._rows = self._bytes = self._tokens = 0

    def add(self, table: pa.Table) -> None:
        sizes = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)
        while table.num_rows:
            take = min(_cut(sizes, self.shard_rows - self._rows, self.shard_bytes - self._bytes),
                       _cut(sizes, ROW_GROUP_ROWS - self._group_rows, ROW_GROUP_BYTES - self._group_bytes))
            part, part_bytes = table.slice(0, take), int(sizes[:take].sum())
            self._group.append(part)
            self._group_rows += take
            self._group_bytes += part_bytes
            self._rows += take
            self._bytes += part_bytes
            self._tokens += int(pc.sum(part.column("n_tokens")).as_py() or 0)
            table, sizes = table.slice(take), sizes[take:]
            if self._rows >= self.shard_rows or self._bytes >= self.shard_bytes:
                self.close()
            elif self._group_rows >= ROW_GROUP_ROWS or self._group_bytes >= ROW_GROUP_BYTES:
                self._write_group()

    def _write_group(self) -> None:
        if not self._group_rows:
            return
        if self._writer is None:
            self._writer = storage.parquet_writer(self._path(), RELEASE_SCHEMA)
        self._writer.write_table(pa.concat_tables(self._group).cast(RELEASE_SCHEMA), row_group_size=ROW_GROUP_ROWS)
        self._group, self._group_rows, self._group_bytes = [], 0, 0

    def _path(self) -> str:
        return f"{self.out_dir}/shard-{len(self.shards):06d}.parquet"

    def close(self) -> None:
        """Finish the open shard (if any) and record its manifest entry."""
        self._write_group()
        if self._writer is None:
            return
        self._writer.close()
        path = self._path()
        fs, p = storage.fs_and_path(path)
        self.shards.append({"file": path.rsplit("/", 1)[-1], "rows": self._rows, "tokens": self._tokens,
                            "bytes": int(fs.info(p)["size"]), "sha256": sha256_of(path)})
        self._writer, self._rows, self._bytes, self._tokens = None, 0, 0, 0
        fault_point("release:shard_written")


def write_in_order(staging: list[str], order: pl.DataFrame, writer: ShardWriter, scratch: str,
                   memory_limit: str = SORT_MEMORY) -> None:
    """Write staged rows (local Parquet files) in the planned order ``order`` (``_file``, ``_row``;
    repeats allowed), sorted out of core by DuckDB."""
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory='{scratch}'")
        con.execute(f"SET memory_limit='{memory_limit}'")
        # Keep insertion order off the table: ORDER BY decides, and fewer threads hold fewer buffers.
        con.execute("SET preserve_insertion_order=false")
        con.execute("SET threads=2")
        plan = order.with_row_index("_ord").to_arrow()
        files = pa.table({"_file": pa.array(range(len(staging)), pa.int64()), "filename": pa.array(staging)})
        con.register("plan_order", plan)
        con.register("plan_files", files)
        listing = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in staging) + "]"
        reader = con.sql(
            f"SELECT s.* EXCLUDE (filename, file_row_number) FROM plan_order o JOIN plan_files f USING (_file) "
            f"JOIN read_parquet({listing}, filename=true, file_row_number=true) s "
            "ON s.filename = f.filename AND s.file_row_number = o._row ORDER BY o._ord").to_arrow_reader(2_048)
        for rb in reader:
            writer.add(pa.Table.from_batches([rb]).cast(RELEASE_SCHEMA))
    finally:
        con.close()
