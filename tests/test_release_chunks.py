"""The release streams each raw shard in chunks (warehouse/releasing/fates.shard_chunks): the same
rows, fates and shards as reading the shard whole, whatever the chunk size."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from planning.release_plan import make_planner
from tests.test_release import _release_rows, _setup
from warehouse.release import build_release
from warehouse.releasing import fates
from warehouse.releasing.fates import Reads, shard_chunks, shard_frame
from warehouse.report.context import load_context
from warehouse.report.fates import ensure_fates, where_matches


@pytest.mark.parametrize("order", ["ingest", "shuffle"])
def test_chunk_size_changes_nothing_in_the_release(tmp_path, corpora, monkeypatch, order):
    got = {}
    for chunk in (fates.CHUNK_ROWS, 37):  # 37: chunks cross the annotation files' row groups
        monkeypatch.setattr(fates, "CHUNK_ROWS", chunk)
        cfg, lake, info, _ = _setup(tmp_path / str(chunk), corpora, order=order)
        planner = make_planner(None, None, None, 7) if order == "shuffle" else None
        manifest, created = build_release(cfg, lake, info, "run-1", "test", planner=planner)
        assert created
        got[chunk] = manifest, [(r["id"], r["text"], r["n_tokens"]) for r in _release_rows(lake, manifest)]
    (m_whole, rows_whole), (m_small, rows_small) = got.values()
    assert rows_small == rows_whole and len(rows_whole) > 300
    assert [s["sha256"] for s in m_small["shards"]] == [s["sha256"] for s in m_whole["shards"]]
    assert m_small["sources"] == m_whole["sources"] and m_small["drop_reasons"] == m_whole["drop_reasons"]


def test_chunks_concatenate_to_the_whole_shard(tmp_path, corpora, monkeypatch):
    cfg, lake, info, _ = _setup(tmp_path, corpora)
    raw = lake.raw_shards("wiki_en")[0]
    # Rewrite the annotation file with row groups of 50 rows: misaligned with chunks of 64 and the raw shard's.
    ann = lake.annotation_path(info[0].key, raw)
    pq.write_table(pq.read_table(ann), ann, row_group_size=50)
    monkeypatch.setattr(fates, "CHUNK_ROWS", 64)
    reads = Reads.of(info, {"length.keep"}, {"length"}, [])
    whole, missing = shard_frame(raw, "wiki_en", info, reads, lake.annotation_path)
    chunks = list(shard_chunks(raw, "wiki_en", info, reads, lake.annotation_path))
    assert len(chunks) == -(-whole.height // 64) and all(m == missing for _, m in chunks)
    assert_frame_equal(pl.concat([c for c, _ in chunks]), whole)
    assert "length.keep" in whole.columns and "length.reason" in whole.columns


def test_report_fates_match_the_release_in_chunks(tmp_path, corpora, monkeypatch):
    """The report replays the release's decisions chunk by chunk: row numbers stay shard rows."""
    cfg, lake, info, _ = _setup(tmp_path, corpora)
    manifest, _ = build_release(cfg, lake, info, "run-1", "test")
    got, default = {}, fates.CHUNK_ROWS
    for chunk in (default, 37):
        monkeypatch.setattr(fates, "CHUNK_ROWS", chunk)
        ctx = load_context(lake, manifest["name"], manifest["version"], stages=info)
        path = ensure_fates(ctx)
        got[chunk] = pl.read_parquet(path)
        Path(path).unlink()
        got[f"where-{chunk}"] = pl.from_arrow(pa.concat_tables(list(where_matches(ctx, "length.keep == false"))))
    whole, small = got[default], got[37]
    assert_frame_equal(small, whole)
    assert whole.height == sum(a["rows_in"] for a in manifest["sources"].values())
    kept = whole.filter(pl.col("fate") == "kept")
    assert kept.height == sum(s["rows"] for s in manifest["shards"])
    # a document's (raw, row) names its row in the raw shard
    raw, row, doc = whole.filter(pl.col("row") > 100).select("raw", "row", "id").row(0)
    assert pq.read_table(raw, columns=["id"]).column("id")[row].as_py() == doc
    assert_frame_equal(got["where-37"], got[f"where-{default}"])
    assert got["where-37"].height > 0
