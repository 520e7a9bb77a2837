"""Writing release shards: streamed as rows arrive, or in a planned order sorted out of core.

``ShardWriter`` cuts shards at ``shard_rows`` rows or once a shard holds ``shard_bytes`` of text,
and row groups at ``ROW_GROUP_ROWS`` rows or ``ROW_GROUP_BYTES`` of text, all counted row by row:
boundaries depend only on the ordered rows, never on how they were batched on the way, so the
same rows give byte-identical shards. Memory: one row group of text (at most ``ROW_GROUP_BYTES``
plus one document), whatever the shard size.

``write_in_order`` fetches staged rows in a planned order (mixture repeats, curriculum) with an
external bucket sort: memory is one staged file plus one bucket of ``BUCKET_BYTES`` of text.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engines import storage
from engines.faults import fault_point
from schemas.documents import DOCUMENT

RELEASE_SCHEMA = pa.schema(list(DOCUMENT) + [pa.field("n_tokens", pa.int64())])
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 32 * 1024 * 1024
# Text per bucket of the planned-order sort, and the most buckets open at once (beyond that many
# times the bucket size, buckets grow).
BUCKET_BYTES = 32 * 1024 * 1024
MAX_BUCKETS = 512


def sha256_of(url: str) -> str:
    return storage.file_sha256(url)


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
                   bucket_bytes: int = BUCKET_BYTES) -> None:
    """Write staged rows in the planned order ``order`` (``_file``, ``_row``, ``_bytes``: staged file,
    row in it, its text bytes; repeats allowed), in two passes that each hold a bounded slice.

    The planned positions are cut into buckets of about ``bucket_bytes`` of text, in order. Pass 1
    reads each staged file once and appends its rows, tagged with their positions, to the buckets
    they belong to (Arrow IPC streams in ``scratch``). Pass 2 reads the buckets in order, sorts each
    by position and hands it to the writer. Memory: one staged file plus one bucket; disk: the
    planned text once more, in ``scratch``.
    """
    total = int(order.get_column("_bytes").sum() or 0)
    bucket_bytes = max(bucket_bytes, total // MAX_BUCKETS + 1)  # at most MAX_BUCKETS files open at once
    plan = order.select("_file", "_row", pl.int_range(pl.len(), dtype=pl.Int64).alias("_ord"),
                        ((pl.col("_bytes").cum_sum() - pl.col("_bytes")) // bucket_bytes).cast(pl.Int64).alias("_bucket"))
    schema = RELEASE_SCHEMA.append(pa.field("_ord", pa.int64()))
    last: Any = plan.get_column("_bucket").max()
    paths = [f"{scratch}/bucket-{b:05d}.arrows" for b in range(int(last or 0) + 1)]
    sinks: dict[int, Any] = {}
    try:
        for (f,), wanted in plan.sort("_file").partition_by(["_file"], as_dict=True, maintain_order=True).items():
            staged = pq.read_table(staging[int(f)]).cast(RELEASE_SCHEMA)
            for (b,), part in wanted.partition_by(["_bucket"], as_dict=True, maintain_order=True).items():
                rows = staged.take(pa.array(part.get_column("_row").to_numpy()))
                sink = sinks.get(int(b)) or sinks.setdefault(int(b), pa.ipc.new_stream(paths[int(b)], schema))
                sink.write_table(rows.append_column("_ord", pa.array(part.get_column("_ord").to_numpy())))
            del staged
    finally:
        for sink in sinks.values():
            sink.close()
    for b, path in enumerate(paths):
        if b not in sinks:
            continue
        with pa.memory_map(path) as source:
            bucket = pa.ipc.open_stream(source).read_all()
        bucket = bucket.take(pc.sort_indices(bucket.column("_ord"))).drop_columns(["_ord"])
        writer.add(bucket)
        del bucket
        storage.fs_and_path(path)[0].rm(path)
