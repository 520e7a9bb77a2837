"""minhash_dedup's fit in band partitions (engines.partitioned_fit: a map per shard, a reduce per
group of bucket partitions, the finish where the artifact is) against the one-process fit: the same
files byte for byte and the same metrics, for several partition counts. The Ray executor's wiring
of the same steps: tests/test_ray_executor.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.executor import LocalExecutor, ShardTask, shard_batches
from engines.partitioned_fit import PartitionedFit, PartitionedIncrementalFit, fit_in_one_process
from engines.stage import StageContext
from filters.minhash.dedup import MinHashDedup
from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashSignatures
from schemas.config import ExecutorConfig
from tests.minhash.test_dedup import family_corpus, write_shard

BATCH_ROWS = 64


def planted_minhash_lake(root: Path, corpora: Path) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """Five shards over two sources (uneven sizes, not multiples of the batch size) of real
    Wikipedia text with 40 planted near-duplicate families (copies, one word changed, a line
    appended) spread across shards, plus documents without a signature (empty, punctuation);
    the signatures computed by minhash_signatures. Returns (source, raw shard, fed columns) per
    shard in lake order, as the flow hands them to minhash_dedup."""
    docs, _ = family_corpus(corpora, np.random.default_rng(7))
    docs[5:5] = ["", " ... ", ""]
    cuts = [0, 97, 230, 231, 390, len(docs)]
    shards = [("wiki" if i < 3 else "news", write_shard(root / "raw" / f"s{i}.parquet", "wiki" if i < 3 else "news",
                                                         docs[a:b]))
              for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    sig = MinHashSignatures({})
    key = sig.key("sig")
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=BATCH_ROWS), show_progress=False) as ex:
        results = ex.run_stage("sig", sig, [ShardTask(s, p, f"{root}/ann/{key}/{Path(p).name}") for s, p in shards])
    assert all(r.status == "computed" for r in results), [r.error for r in results]
    return [(s, p, [(c, f"{root}/ann/{key}/{Path(p).name}", c) for c in (BANDS_COLUMN, COUNT_COLUMN)])
            for s, p in shards]


def dedup_tasks(shards: list[tuple[str, str, list[tuple[str, str, str]]]]) -> list[ShardTask]:
    return [ShardTask(s, p, "", tuple(tuple(i) for i in inputs)) for s, p, inputs in shards]  # type: ignore[misc]


def artifact_files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


@pytest.mark.parametrize("params", [{"partitions": 5}, {"verify": False, "survivor": "min_id"}])
def test_fit_in_band_partitions_writes_the_same_artifact(tmp_path, corpora, params):
    shards = planted_minhash_lake(tmp_path, corpora)
    tasks = dedup_tasks(shards)
    stage = MinHashDedup(params)
    assert isinstance(stage, PartitionedFit)
    ref = tmp_path / "ref"
    ref.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=BATCH_ROWS), show_progress=False) as ex:
        ref_metrics = ex.fit(stage, tasks, str(ref))
    assert ref_metrics["duplicates"] >= 100 and ref_metrics["without_signature"] == 3
    expected = artifact_files(ref)
    assert "buckets/part-0000.parquet" in expected and "docs.parquet" in expected
    for partitions in (1, 2, 3, 7):
        art = tmp_path / f"p{partitions}"
        art.mkdir()
        metrics = fit_in_one_process(
            stage, [lambda t=t: (b for _, b in shard_batches(stage, t, BATCH_ROWS)) for t in tasks], partitions, str(art))
        assert without_seconds(metrics) == without_seconds(ref_metrics), partitions
        got = artifact_files(art)
        assert sorted(got) == sorted(expected), partitions
        for name, data in expected.items():
            assert got[name] == data, (partitions, name)


@pytest.mark.parametrize("params", [{"partitions": 5}, {"max_shingles": 16, "survivor": "min_id"}])
def test_two_pass_fit_writes_the_one_pass_artifact(tmp_path, corpora, params, monkeypatch):
    """The local executor's fit (engines/reread_fit.py: a scan without the text, then the shingle
    sets of the documents in a candidate pair only) writes ``fit``'s files byte for byte, with its
    metrics, against the one pass that shingles every document (bottom-k sets included)."""
    shards = planted_minhash_lake(tmp_path, corpora)
    tasks = dedup_tasks(shards)
    stage = MinHashDedup(params)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    stage.bind(StageContext(threads=1))
    ref = stage.fit((b for t in tasks for _, b in shard_batches(stage, t, BATCH_ROWS)), str(one))
    assert ref["accepted_pairs"] > 0 and ref["without_signature"] == 3
    seen: list[tuple[str, ...]] = []
    real = MinHashDedup.fit_reread

    def reread(self, batches, rows):
        seen.append(tuple(self.needs))
        return real(self, batches, rows)

    monkeypatch.setattr(MinHashDedup, "fit_reread", reread)
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=BATCH_ROWS), show_progress=False) as ex:
        metrics = ex.fit(stage, tasks, str(two))
    assert seen and all(needs == ("id", "text") for needs in seen)  # the second pass read the text alone
    assert "text" in stage.needs
    assert without_seconds(metrics) == without_seconds(ref)
    expected, got = artifact_files(one), artifact_files(two)
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name] == data, name


def test_two_pass_fit_reads_fed_derived_text(tmp_path, corpora):
    """With the text fed from an earlier stage's derived column (null where unchanged, falling
    back to the shard's text), the two-pass fit verifies on that text, as the one pass does."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    shards = planted_minhash_lake(tmp_path, corpora)
    tasks = []
    for t in dedup_tasks(shards):
        raw = pq.read_table(t.raw_path, columns=["id", "text"])
        texts = raw.column("text").to_pylist()
        clean = [None if i % 3 else f"{x} plus a line that a cleaning stage appended" for i, x in enumerate(texts)]
        path = tmp_path / "clean" / Path(t.raw_path).name
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": raw.column("id"), "clean": pa.array(clean, pa.string())}), path)
        tasks.append(ShardTask(t.source, t.raw_path, "", t.inputs + (("text", str(path), "clean"), ("text", "", "text"))))
    stage = MinHashDedup({})
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    stage.bind(StageContext(threads=1))
    ref = stage.fit((b for t in tasks for _, b in shard_batches(stage, t, BATCH_ROWS)), str(one))
    plain = tmp_path / "plain"
    plain.mkdir()
    base = stage.fit((b for t in dedup_tasks(shards) for _, b in shard_batches(stage, t, BATCH_ROWS)), str(plain))
    assert ref["candidate_similarity_histogram"] != base["candidate_similarity_histogram"]  # the fed text counted
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=BATCH_ROWS), show_progress=False) as ex:
        metrics = ex.fit(stage, tasks, str(two))
    assert without_seconds(metrics) == without_seconds(ref)
    assert artifact_files(one) == artifact_files(two)


@pytest.mark.parametrize("params,cut,end", [({"partitions": 5}, 3, 5), ({"verify": False}, 3, 5), ({}, 2, 3)])
def test_nightly_update_in_band_partitions_writes_the_same_artifact(tmp_path, corpora, params, cut, end):
    """The nightly update (``fit_incremental``) split as the full fit is: a map per new shard, a
    reduce per group of bucket partitions merged into the earlier band index, the finish on top
    of the earlier artifact (rereading earlier and new documents of candidate pairs) writes the
    one-process update's files byte for byte, with its metrics, for 1, 2, 3 and 7 partitions. The
    earlier fit covers shards [0, cut), the night brings [cut, end); planted families span both.
    The last case's night is one document: most of the 64 bucket partitions get no new row."""
    shards = planted_minhash_lake(tmp_path, corpora)
    tasks = dedup_tasks(shards)
    earlier, new = tasks[:cut], tasks[cut:end]
    stage = MinHashDedup(params)
    assert isinstance(stage, PartitionedIncrementalFit)
    prev, ref = tmp_path / "prev", tmp_path / "ref"
    prev.mkdir()
    ref.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=BATCH_ROWS), show_progress=False) as ex:
        ex.fit(stage, earlier, str(prev))
        ref_metrics = ex.fit_incremental(stage, str(prev), new, earlier, str(ref))
    assert ref_metrics["new_documents"] == sum(pq_rows(t.raw_path) for t in new)
    if end == 5:
        assert ref_metrics["accepted_pairs"] > 0 and ref_metrics["duplicates"] >= 100
    expected = artifact_files(ref)
    assert {"buckets/part-0000.parquet", "docs.parquet", "roots.parquet", "assignment.parquet"} <= set(expected)

    def batches(t):
        return lambda: (b for _, b in shard_batches(stage, t, BATCH_ROWS))

    for partitions in (1, 2, 3, 7):
        art = tmp_path / f"p{partitions}"
        art.mkdir()
        metrics = fit_in_one_process(stage, [batches(t) for t in new], partitions, str(art), str(prev),
                                     [batches(t) for t in earlier])
        assert without_seconds(metrics) == without_seconds(ref_metrics), partitions
        got = artifact_files(art)
        assert sorted(got) == sorted(expected), partitions
        for name, data in expected.items():
            assert got[name] == data, (partitions, name)


def pq_rows(path: str) -> int:
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).metadata.num_rows


@pytest.mark.parametrize("params", [{"partitions": 5}, {"max_shingles": 16, "survivor": "min_id", "partitions": 3}])
def test_fit_on_several_threads_writes_the_one_thread_artifact(tmp_path, corpora, params):
    """The fit's threads (per bucket partition, per pair partition, and in the two-pass fit the
    shards reread at once: engines.partitioned_fit.in_order) change nothing: the two-pass fit,
    the one-pass fit and a nightly update on 2 and 3 threads write the 1-thread files byte for
    byte, with its metrics. The shards are uneven (one of a single row, which a second thread
    finishes first), so a result taken out of order would show."""
    from engines.reread_fit import fit_two_pass
    shards = planted_minhash_lake(tmp_path, corpora)
    tasks = dedup_tasks(shards)
    stage = MinHashDedup(params)

    def shard_callables(t):
        return lambda: (b for _, b in shard_batches(stage, t, BATCH_ROWS))

    runs = {}
    for threads in (1, 2, 3):
        stage.bind(StageContext(threads=threads))
        two, one, prev, night = (tmp_path / f"{name}{threads}" for name in ("two", "one", "prev", "night"))
        for folder in (two, one, prev, night):
            folder.mkdir()
        m_two = fit_two_pass(stage, [shard_callables(t) for t in tasks], str(two))
        m_one = stage.fit((b for t in tasks for _, b in shard_batches(stage, t, BATCH_ROWS)), str(one))
        stage.fit((b for t in tasks[:3] for _, b in shard_batches(stage, t, BATCH_ROWS)), str(prev))
        from engines.earlier_rows import ShardRows
        m_night = stage.fit_incremental(str(prev), (b for t in tasks[3:] for _, b in shard_batches(stage, t, BATCH_ROWS)),
                                        str(night), ShardRows([t.raw_path for t in tasks[:3]])) \
            if stage.fit_policy == "incremental" else None
        runs[threads] = [(without_seconds(m_two), artifact_files(two)), (without_seconds(m_one), artifact_files(one)),
                         (without_seconds(m_night) if m_night else None, artifact_files(night))]
    assert runs[1][0][0]["accepted_pairs"] > 0
    assert runs[1][0] == runs[1][1]  # two-pass and one-pass agree (as test_two_pass_fit_writes_the_one_pass_artifact)
    for threads in (2, 3):
        for (m1, f1), (m, f) in zip(runs[1], runs[threads]):
            assert m == m1, threads
            assert sorted(f) == sorted(f1), threads
            for name, data in f1.items():
                assert f[name] == data, (threads, name)


def test_in_order_keeps_order_and_bounds_the_work_in_flight():
    """``in_order`` yields in the items' order even when later items finish first, never runs
    more than ``threads`` calls at once, and raises a call's exception at its turn."""
    import threading
    import time

    from engines.partitioned_fit import in_order
    running, most, lock = 0, 0, threading.Lock()

    def slow(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * ((7 - i) % 4))  # later items often finish first
        with lock:
            running -= 1
        if i == 11:
            raise ValueError("item 11")
        return i * i

    for threads in (1, 2, 3):
        most = 0
        got = []
        with pytest.raises(ValueError, match="item 11"):
            for r in in_order(slow, range(14), threads):
                got.append(r)
        assert got == [i * i for i in range(11)], threads
        assert most <= threads, (threads, most)
        if threads > 1:
            assert most > 1, threads  # it did run calls at once


def test_read_ahead_keeps_the_items_and_reads_one_ahead():
    """``read_ahead`` gives every item in order, makes at most one beyond the one the caller
    holds, raises the reader's exception at its turn, and stops reading when the caller stops."""
    import itertools

    from engines.partitioned_fit import read_ahead
    made: list[int] = []

    def reader(n: int, fail_at: int | None = None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"batch {i}")
            made.append(i)
            yield i

    for threads in (1, 2):
        made.clear()
        seen = []
        for item in read_ahead(reader(50), threads):
            assert len(made) <= item + 2, (threads, item, len(made))  # this one and at most the next
            seen.append(item)
        assert seen == list(range(50))
        made.clear()
        with pytest.raises(ValueError, match="batch 7"):
            assert list(read_ahead(reader(20, fail_at=7), threads)) == []
        assert made == list(range(7))
        made.clear()
        assert list(itertools.islice(read_ahead(reader(50), threads), 3)) == [0, 1, 2]
        assert len(made) <= 4, threads


def test_fit_threads_never_exceed_the_executors_grant():
    """The fit's own threads: the executor's grant (``context.threads``), ``threads`` when smaller."""
    for params, grant, expected in (({}, 2, 2), ({"threads": 1}, 2, 1), ({"threads": 8}, 2, 2), ({}, 1, 1)):
        stage = MinHashDedup(params)
        stage.bind(StageContext(threads=grant))
        assert stage.fit_threads() == expected, (params, grant)
