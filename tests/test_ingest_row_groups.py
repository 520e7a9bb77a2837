"""Ingest writes raw shards in row groups of ``ROW_GROUP_ROWS`` rows as they fill (readers/ingest.
_ShardSink): the same rows and shard boundaries whatever the row-group size, every row group full
but a shard's last, also when a shard or the file ends exactly on a row-group boundary."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from readers import ingest
from readers.ingest import IngestFileTask, ingest_file
from schemas.config import SourceConfig
from tests.helpers import real_texts


def _ingest(tmp_path, corpora, rows: int, group_rows: int, shard_bytes: int, monkeypatch) -> list[dict]:
    texts = real_texts(corpora, "wiki_en", rows)
    src_file = tmp_path / "in.parquet"
    if not src_file.exists():
        # Input row groups of 50 rows: the reader's batches end on multiples of 50.
        pq.write_table(pa.table({"id": [f"d{i}" for i in range(rows)], "text": texts}), src_file, row_group_size=50)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", group_rows)
    out = tmp_path / f"out-{group_rows}-{shard_bytes}"
    source = SourceConfig.model_validate({"name": "w", "format": "parquet", "paths": [str(src_file)],
                                          "columns": {"text": "text", "id": "id"}})
    res = ingest_file(IngestFileTask(source, str(src_file), 0, str(out), str(out / "q"), "ing-1", "run-1",
                                     shard_bytes))
    assert res.rows_written == rows and not res.rows_quarantined
    return res.parts


@pytest.mark.parametrize("group_rows", [50, 100, 37])  # 50 and 100: shards and the file end on a group boundary
def test_row_groups_change_no_row_and_no_shard(tmp_path, corpora, monkeypatch, group_rows):
    rows, shard_bytes = 400, 150_000  # a few shards, rolled over at batch ends
    whole = _ingest(tmp_path, corpora, rows, 1_000_000, shard_bytes, monkeypatch)
    parts = _ingest(tmp_path, corpora, rows, group_rows, shard_bytes, monkeypatch)
    assert len(parts) == len(whole) > 1
    assert [(p["rows"], p["text_bytes"]) for p in parts] == [(p["rows"], p["text_bytes"]) for p in whole]
    for got, ref in zip(parts, whole):
        assert pq.read_table(got["path"]).equals(pq.read_table(ref["path"]))
        meta = pq.ParquetFile(got["path"]).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert sum(sizes) == got["rows"] and all(s == group_rows for s in sizes[:-1]) and 0 < sizes[-1] <= group_rows
    assert not list((tmp_path / f"out-{group_rows}-{shard_bytes}").glob(".tmp-*")), "no temporary file left"
