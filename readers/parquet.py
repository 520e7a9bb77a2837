"""Parquet reader: row group by row group, so one bad row group costs only itself."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from readers.base import (
    BATCH_BYTES,
    BATCH_ROWS,
    Quarantined,
    ReadItem,
    open_binary,
)
from readers.tables import finish
from schemas.config import SourceConfig


def _batch_rows(metadata: pq.RowGroupMetaData) -> int:
    # Size batches from the row group's uncompressed size, so long documents do not make
    # a BATCH_ROWS batch of gigabytes before batches() could cut it.
    per_row = max(1, metadata.total_byte_size // max(1, metadata.num_rows))
    return int(min(BATCH_ROWS, max(1, BATCH_BYTES // per_row)))


def read_parquet(path: str, source: SourceConfig) -> Iterator[ReadItem]:
    """Read a Parquet file row group by row group, all columns, ``__offset`` = row index in the file.

    A row group that cannot be decoded (bad compression, failed page checksum) is quarantined from
    its first unread row (``rows`` from the footer), and the next row groups are still read; a file
    whose footer cannot be read is one Quarantined entry with ``offset=None``. Page checksums are
    verified where the writer stored them. A binary text column is decoded as UTF-8 and invalid
    bytes in any string column become U+FFFD (pages corrupted without a checksum or compression
    can decode to wrong but well-formed values, which no reader can tell from real data).

    Cost: one pass; memory is about one row group's column chunks plus one batch.
    """
    text_column = source.columns.text
    with open_binary(path, compression=None) as f:
        try:
            pf = pq.ParquetFile(f, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as e:
            yield Quarantined(path, None, 1, f"not a readable Parquet file ({e}); the footer is missing or "
                                             "corrupt, so the file is probably truncated: copy or export it again")
            return
        first = 0
        for g in range(pf.num_row_groups):
            meta = pf.metadata.row_group(g)
            done = 0
            parts = pf.iter_batches(batch_size=_batch_rows(meta), row_groups=[g], use_threads=True)
            while True:
                try:
                    batch = next(parts, None)
                except (pa.ArrowException, OSError) as e:
                    yield Quarantined(path, first + done, meta.num_rows - done,
                                      f"row group {g} (rows {first + done}-{first + meta.num_rows - 1}) cannot be "
                                      f"decoded: {e}; the other row groups were read")
                    break
                if batch is None:
                    if done < meta.num_rows:
                        yield Quarantined(path, first + done, meta.num_rows - done,
                                          f"row group {g} ended after {done} of the {meta.num_rows} rows its footer lists")
                    break
                yield from finish(pa.Table.from_batches([batch]), np.arange(first + done, first + done + batch.num_rows),
                                  text_column, source, path)
                done += batch.num_rows
            first += meta.num_rows
