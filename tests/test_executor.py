"""The local executor: aligned annotations, skip of finished shards, per-row error isolation."""
from __future__ import annotations

import pyarrow.parquet as pq

import tests.plugins  # noqa: F401 - registers the test stages
from engines.executor import LocalExecutor, ShardTask
from filters.length import LengthFilter
from schemas.config import ExecutorConfig
from tests.helpers import make_lake, real_texts
from tests.plugins import Trap
from warehouse.lake import Lake


def _tasks(lake: Lake, key: str) -> list[ShardTask]:
    return [ShardTask(lake.source_of(p), p, lake.annotation_path(key, p)) for s in ("wiki_en", "wiki_fr")
            for p in lake.raw_shards(s)]


def test_length_filter_over_process_pool_matches_python(tmp_path, corpora):
    en = real_texts(corpora, "wiki_en", 900)
    fr = real_texts(corpora, "wiki_fr", 300)
    make_lake(tmp_path, {"wiki_en": [en[:300], en[300:600], en[600:]], "wiki_fr": [fr]})
    lake = Lake(str(tmp_path))
    stage = LengthFilter({"min_words": 40})
    key = stage.key("length")
    tasks = _tasks(lake, key)
    with LocalExecutor(ExecutorConfig(workers=2, batch_rows=128), show_progress=False) as ex:
        results = ex.run_stage("length", stage, tasks)
    assert [r.status for r in results] == ["computed"] * 4
    for t in tasks:
        raw = pq.read_table(t.raw_path)
        ann = pq.read_table(t.out_path)
        assert ann.column("id").to_pylist() == raw.column("id").to_pylist()  # row-aligned
        expected = [len(x.split()) >= 40 for x in raw.column("text").to_pylist()]
        assert ann.column("keep").to_pylist() == expected
        assert ann.column("reason").to_pylist() == [None if k else "too_few_words" for k in expected]
        assert ann.column("_error").null_count == ann.num_rows
    # A second run finds every output and recomputes nothing.
    with LocalExecutor(ExecutorConfig(workers=2), show_progress=False) as ex:
        again = ex.run_stage("length", stage, tasks)
    assert [r.status for r in again] == ["skipped"] * 4
    assert sum(r.rows for r in again) == 1200


def test_inline_and_pool_give_identical_files(tmp_path, corpora):
    en = real_texts(corpora, "wiki_en", 400)
    make_lake(tmp_path / "a", {"wiki_en": [en[:200], en[200:]]})
    make_lake(tmp_path / "b", {"wiki_en": [en[:200], en[200:]]})
    stage = LengthFilter()
    for sub, workers in (("a", 1), ("b", 2)):
        lake = Lake(str(tmp_path / sub))
        with LocalExecutor(ExecutorConfig(workers=workers), show_progress=False) as ex:
            ex.run_stage("length", stage, [ShardTask("wiki_en", p, lake.annotation_path(stage.key("length"), p))
                                            for p in lake.raw_shards("wiki_en")])
    a = sorted((tmp_path / "a" / "annotations").rglob("*.parquet"))
    b = sorted((tmp_path / "b" / "annotations").rglob("*.parquet"))
    assert len(a) == 2 and [x.read_bytes() for x in a] == [x.read_bytes() for x in b]


def test_a_failing_row_costs_only_itself(tmp_path, corpora):
    texts = real_texts(corpora, "wiki_en", 300)
    trapped = {i for i, t in enumerate(texts) if "American" in t}
    assert 0 < len(trapped) < 100
    make_lake(tmp_path, {"wiki_en": [texts]})
    lake = Lake(str(tmp_path))
    stage = Trap({"trap": "American"})
    raw = lake.raw_shards("wiki_en")[0]
    task = ShardTask("wiki_en", raw, lake.annotation_path(stage.key("trap"), raw))
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=64), show_progress=False) as ex:
        [res] = ex.run_stage("trap", stage, [task])
    assert res.status == "computed" and res.row_errors == len(trapped)
    ann = pq.read_table(task.out_path).to_pylist()
    assert len(ann) == 300
    assert {i for i, r in enumerate(ann) if r["_error"]} == trapped
    assert all(r["keep"] is True for i, r in enumerate(ann) if i not in trapped)
    assert all("trap 'American' hit" in r["_error"] and r["keep"] is None for i, r in enumerate(ann) if i in trapped)


def test_fed_columns_stream_in_step_with_the_shard(tmp_path, corpora):
    """A fed annotation column is read a row group at a time and re-sliced to the shard's batches,
    whatever its own row-group layout: each batch gets exactly its rows' values."""
    import pyarrow as pa

    from engines.executor import shard_batches
    texts = real_texts(corpora, "wiki_en", 500)
    make_lake(tmp_path, {"wiki_en": [texts]})
    lake = Lake(str(tmp_path))
    raw = lake.raw_shards("wiki_en")[0]
    ids = pq.read_table(raw, columns=["id"]).column("id")
    side = tmp_path / "side.parquet"
    # Row groups of 37 rows against batches of 64: every batch straddles row groups.
    pq.write_table(pa.table({"id": ids, "n": pa.array(range(len(ids)), pa.int64())}), side, row_group_size=37)
    stage = LengthFilter()
    task = ShardTask("wiki_en", raw, str(tmp_path / "out.parquet"), (("n", str(side), "n"),))
    seen = []
    for batch_ids, batch in shard_batches(stage, task, 64):
        assert batch.height <= 64
        seen += batch.get_column("n").to_list()
        assert batch_ids.to_pylist() == [ids[i].as_py() for i in batch.get_column("n").to_list()]
    assert seen == list(range(len(ids)))
    # A fed file shorter than its shard is an error, not silently misaligned rows.
    short = tmp_path / "short.parquet"
    pq.write_table(pa.table({"id": ids.slice(0, len(ids) - 3), "n": pa.array(range(len(ids) - 3), pa.int64())}), short)
    bad = ShardTask("wiki_en", raw, str(tmp_path / "out2.parquet"), (("n", str(short), "n"),))
    import pytest
    with pytest.raises(ValueError, match="fewer rows"):
        list(shard_batches(stage, bad, 64))
