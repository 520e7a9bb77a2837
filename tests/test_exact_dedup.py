"""Exact dedup as a global stage (fit, then per-shard apply), against a plain-Python reference."""
from __future__ import annotations

import pyarrow.parquet as pq

from engines.executor import LocalExecutor, ShardTask
from engines.stage import StageContext
from filters.exact_dedup import ExactDedup
from schemas.config import ExecutorConfig
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake


def planted_lake(root, corpora) -> tuple[Lake, list[tuple[str, str]]]:
    """Four shards of real text with planted copies: across sources and shards, within a shard,
    and differing only by case and spacing. Returns the lake and its (source, shard) lake order."""
    en = real_texts(corpora, "wiki_en", 400)
    fr = real_texts(corpora, "wiki_fr", 200)
    docs = real_texts(corpora, "python_docs", 30)
    fr[10] = en[3]
    fr[11] = "  " + en[5].upper().replace(" ", "   ") + "\n"
    en[250] = en[7]
    docs[4] = fr[20]
    make_lake(root, {"wiki_en": [en[:200], en[200:]], "wiki_fr": [fr], "python_docs": [docs]})
    lake = Lake(str(root))
    return lake, [(s, p) for s in ("wiki_en", "wiki_fr", "python_docs") for p in lake.raw_shards(s)]


def planted_night(root, corpora) -> list[str]:
    """A night's two new shards for ``planted_lake``'s lake (source ``news``): 65 documents, six
    of them exact copies (five of earlier documents, one of a new one). Returns their paths."""
    night = real_texts(corpora, "wiki_en", 60, offset=400) + real_texts(corpora, "wiki_fr", 5)  # fr[:5]: old
    night[3] = night[40]
    make_lake(root, {"news": [night[:25], night[25:]]}, ingest_run="ing-night")
    return Lake(str(root)).raw_shards("news")


def test_planted_duplicates_match_reference(tmp_path, corpora):
    lake, order = planted_lake(tmp_path, corpora)
    stage = ExactDedup()
    art = tmp_path / "art"
    art.mkdir()
    with LocalExecutor(ExecutorConfig(workers=2, batch_rows=50), show_progress=False) as ex:
        key = stage.key("dedup")
        tasks = [ShardTask(s, p, lake.annotation_path(key, p)) for s, p in order]
        metrics = ex.fit(stage, tasks, str(art))
        ex.run_stage("dedup", stage, tasks, StageContext(artifact_dir=str(art)))
    # Reference: walk the corpus in lake order with a dict of normalised texts.
    seen: dict[str, str] = {}
    expected, survivors = [], []
    for _, p in order:
        raw = pq.read_table(p).to_pylist()
        for r in raw:
            norm = " ".join(r["text"].lower().split())
            expected.append(norm in seen)
            survivors.append(seen.setdefault(norm, r["id"]))
    got = [r for t in tasks for r in pq.read_table(t.out_path).to_pylist()]
    assert [not r["keep"] for r in got] == expected
    assert sum(expected) == 4 and metrics["duplicates"] == 4
    assert [r["survivor_id"] for r in got] == survivors
    assert {r["reason"] for r in got if not r["keep"]} == {"exact_duplicate"}


def test_already_released_documents_survive_new_copies(tmp_path, corpora):
    """A nightly ingest that repeats a document of an earlier ingest: the old one stays, even
    when the new copy comes from an earlier-listed source or sorts first by path."""
    old = real_texts(corpora, "wiki_fr", 50)
    new = real_texts(corpora, "wiki_en", 50)
    new[7] = old[3]
    make_lake(tmp_path, {"docs": [old]}, ingest_run="ing-zzz", ingested_at="2026-01-01T00:00:00")
    make_lake(tmp_path, {"web": [new]}, ingest_run="ing-aaa", ingested_at="2026-02-01T00:00:00")
    lake = Lake(str(tmp_path))
    order = lake.shards_by_age(["web", "docs"])  # "web" is listed first, but "docs" is older
    assert [s for s, _ in order] == ["docs", "web"]
    stage = ExactDedup()
    tasks = [ShardTask(s, p, lake.annotation_path(stage.key("d"), p)) for s, p in order]
    art = tmp_path / "art"
    art.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1), show_progress=False) as ex:
        ex.fit(stage, tasks, str(art))
        ex.run_stage("d", stage, tasks, StageContext(artifact_dir=str(art)))
    docs_ann = pq.read_table(tasks[0].out_path).to_pylist()
    web_ann = pq.read_table(tasks[1].out_path).to_pylist()
    assert all(r["keep"] for r in docs_ann)
    assert [i for i, r in enumerate(web_ann) if not r["keep"]] == [7]
    assert web_ann[7]["survivor_id"] == docs_ann[3]["id"]


def test_fit_in_partitions_writes_the_same_artifact(tmp_path, corpora):
    """The partitioned fit (engines.partitioned_fit: map per shard, reduce per hash partition,
    finish), run here in one process as the contract describes it, writes the one-process fit's
    files byte for byte and its metrics, for any number of partitions (the Ray executor's wiring
    of the same steps: tests/test_ray_executor.py)."""
    from engines.executor import shard_batches
    from engines.partitioned_fit import PartitionedFit, fit_in_one_process
    lake, order = planted_lake(tmp_path / "lake", corpora)
    stage = ExactDedup()
    assert isinstance(stage, PartitionedFit)
    tasks = [ShardTask(s, p, "") for s, p in order]
    ref = tmp_path / "ref"
    ref.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=64), show_progress=False) as ex:
        ref_metrics = ex.fit(stage, tasks, str(ref))
    for partitions in (1, 2, 3, 7):
        art = tmp_path / f"p{partitions}"
        art.mkdir()
        metrics = fit_in_one_process(stage, [lambda t=t: (b for _, b in shard_batches(stage, t, 64)) for t in tasks],
                                     partitions, str(art))
        assert metrics == ref_metrics and metrics["duplicates"] == 4
        for name in ("index.parquet", "duplicate_groups.parquet"):
            assert (art / name).read_bytes() == (ref / name).read_bytes(), (partitions, name)


def test_incremental_fit_in_partitions_writes_the_same_artifact(tmp_path, corpora):
    """The nightly update in partitions (map and reduce over the new shards only, then a finish
    that merges them into the earlier index: ``fit_finish_incremental``) writes what
    ``fit_incremental`` writes, byte for byte, with its metrics; new copies of earlier documents
    keep the earlier survivor."""
    from engines.executor import shard_batches
    from engines.partitioned_fit import PartitionedIncrementalFit, fit_in_one_process
    lake, order = planted_lake(tmp_path / "lake", corpora)
    new = [ShardTask("news", p, "") for p in planted_night(tmp_path / "lake", corpora)]
    stage = ExactDedup()
    assert isinstance(stage, PartitionedIncrementalFit)
    prev, ref = tmp_path / "prev", tmp_path / "ref"
    prev.mkdir()
    ref.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=64), show_progress=False) as ex:
        ex.fit(stage, [ShardTask(s, p, "") for s, p in order], str(prev))
        ref_metrics = ex.fit_incremental(stage, str(prev), new, [], str(ref))
    assert ref_metrics["new_documents"] == 65 and ref_metrics["new_duplicates"] == 6
    for partitions in (1, 2, 3, 7):
        art = tmp_path / f"p{partitions}"
        art.mkdir()
        metrics = fit_in_one_process(stage, [lambda t=t: (b for _, b in shard_batches(stage, t, 64)) for t in new],
                                     partitions, str(art), previous_dir=str(prev))
        assert metrics == ref_metrics
        for name in ("index.parquet", "duplicate_groups.parquet"):
            assert (art / name).read_bytes() == (ref / name).read_bytes(), (partitions, name)
