"""A raw shard that cannot be written (storage full, a bucket gone) fails the file's ingest with a
clear error: nothing half-written is published, no done-marker is left, and the next attempt
ingests the whole file. Before, the reader's catch-all recorded it as a "reader failed" row and
then tripped an assertion when it tried to finish the same shard again."""
from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

import readers.ingest as ingest
from readers.ingest import IngestFileTask, ShardWriteError, ingest_file
from schemas.config import SourceConfig


@pytest.fixture()
def task(tmp_path: Path, corpora: Path) -> IngestFileTask:
    rows = pq.read_table(corpora / "wiki_en.parquet", columns=["text", "url"]).slice(0, 120).to_pylist()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    source = SourceConfig(name="s", format="jsonl", paths=[str(path)])
    return IngestFileTask(source, str(path), 0, str(tmp_path / "raw"), str(tmp_path / "q"), "ing", "run", 1 << 27)


class _FailingWriter:
    """The real Parquet writer, failing at ``fail_on`` (``write_table`` or ``close``) like a full disk."""

    def __init__(self, real, fail_on: str):
        self.real, self.fail_on = real, fail_on

    def write_table(self, *a, **k):
        if self.fail_on == "write_table":
            raise OSError(28, "No space left on device")
        return self.real.write_table(*a, **k)

    def close(self):
        self.real.close()
        if self.fail_on == "close":
            raise OSError(28, "No space left on device")


def _published(out_dir: str) -> list[Path]:
    return sorted(p for p in Path(out_dir).rglob("*") if p.is_file())


@pytest.mark.parametrize("fail_on", ["write_table", "close"])
def test_a_failed_shard_write_fails_the_file_and_a_retry_loses_nothing(task, monkeypatch, fail_on):
    real = ingest.storage.parquet_writer
    monkeypatch.setattr(ingest.storage, "parquet_writer", lambda *a, **k: _FailingWriter(real(*a, **k), fail_on))
    with pytest.raises(ShardWriteError, match="No space left on device") as info:
        ingest_file(task)
    assert "part-00000-000.parquet" in str(info.value)
    assert _published(task.out_dir) == []  # no shard, no temporary file, no done-marker
    assert not Path(task.quarantine_dir).exists()  # not mistaken for a reader failure

    monkeypatch.setattr(ingest.storage, "parquet_writer", real)
    res = ingest_file(task)
    assert res.rows_written == 120 and res.rows_quarantined == 0 and not res.skipped
    assert sum(pq.read_metadata(p["path"]).num_rows for p in res.parts) == 120
