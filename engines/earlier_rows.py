"""Reading back chosen rows of earlier shards, by position in lake order.

An incremental fit (``GlobalStage.fit_incremental``) sees only the new shards' batches; when it
needs a few earlier documents again (say the text of old documents that a new one may
duplicate, to verify the pair), it asks for them by position: 0 is the first row of the first
earlier shard, positions run on through the shards in lake order.

``ShardRows`` maps positions to (shard, row) from the Parquet footers (read once, lazily) and
reads only the row groups holding wanted rows, only the wanted columns: memory is one row group
of those columns at a time plus the rows returned.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage
from engines.stage import EarlierRows


class ShardRows(EarlierRows):
    def __init__(self, shards: list[str]):
        self.shards = shards
        self._starts: np.ndarray | None = None
        self._groups: dict[int, np.ndarray] = {}

    def _shard_starts(self) -> np.ndarray:
        """First position of each shard (and the total as the last entry)."""
        if self._starts is None:
            counts = [storage.parquet_rows(s) for s in self.shards]
            self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        return self._starts

    def rows(self, positions: Any, columns: list[str]) -> pl.DataFrame:
        pos = np.unique(np.asarray(positions, dtype=np.int64))
        starts = self._shard_starts()
        if len(pos) and (pos[0] < 0 or pos[-1] >= starts[-1]):
            raise IndexError(f"positions outside the {int(starts[-1])} earlier rows")
        shard_of = np.searchsorted(starts, pos, side="right") - 1
        parts = []
        for s in np.unique(shard_of).tolist():
            parts.append(self._read(s, pos[shard_of == s] - starts[s], columns))
        if not parts:
            return pl.DataFrame(schema={c: pl.String for c in columns})
        out = pl.concat(parts, how="vertical_relaxed")
        return out

    def _read(self, shard: int, local: np.ndarray, columns: list[str]) -> pl.DataFrame:
        fs, path = storage.fs_and_path(self.shards[shard])
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            bounds = np.concatenate([[0], np.cumsum([pf.metadata.row_group(i).num_rows
                                                     for i in range(pf.num_row_groups)])]).astype(np.int64)
            group_of = np.searchsorted(bounds, local, side="right") - 1
            tables = []
            for g in np.unique(group_of).tolist():
                rg = pf.read_row_group(g, columns=columns)
                tables.append(rg.take(pa.array(local[group_of == g] - bounds[g])))
        frame = pl.from_arrow(pa.concat_tables(tables))
        assert isinstance(frame, pl.DataFrame)
        return frame
