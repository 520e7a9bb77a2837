"""The executor contract (issue 13): protocol, runtime params outside the stage key, threads from the
context, teardown, annotation files aligned with their raw shard by id."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tests.plugins  # noqa: F401 - registers the test stages
from engines.executor import Executor, LocalExecutor, ShardTask, make_executor
from engines.inference.base import InferenceConfig, backend_resources
from engines.stage import Resources, Stage, stage_class
from filters.length import LengthFilter
from filters.minhash.signatures import MinHashSignatures
from flows.registry import load_stages
from schemas.config import ExecutorConfig
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake


def test_local_executor_implements_the_protocol():
    with LocalExecutor(ExecutorConfig(workers=1), show_progress=False) as ex:
        assert isinstance(ex, Executor)
    assert isinstance(make_executor(ExecutorConfig(kind="local")), Executor)


def test_executor_config_kinds_and_addresses():
    assert ExecutorConfig(kind="ray", address="auto").address == "auto"
    assert ExecutorConfig(kind="ray", address="ray://head:10001").address == "ray://head:10001"
    assert ExecutorConfig(kind="ray", address="127.0.0.1:6379").kind == "ray"
    with pytest.raises(ValueError, match="executor.address"):
        ExecutorConfig(kind="ray", address="somewhere")
    with pytest.raises(ValueError):
        ExecutorConfig(kind="spark")  # type: ignore[arg-type]


def test_ray_workers_get_the_drivers_s3_settings_and_only_those(monkeypatch):
    """What a Ray job's workers get of the driver's environment: the S3 endpoint, region and
    credentials (so ``lake: s3://`` works on a cluster that knows nothing of them), the CURATE_*
    switches, never a profile name or file path of the driver's machine; ``forward_env`` decides,
    and it leaves the config hash alone (it cannot change output)."""
    from engines.ray_executor import worker_env
    from schemas.config import PipelineConfig
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION", "HOME_BANK"):
        monkeypatch.setenv(k, f"v-{k}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    for k in [k for k in os.environ if k.startswith("CURATE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CURATE_SCRATCH", "/scratch")
    assert sorted(worker_env()) == ["AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_REGION",
                                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "CURATE_SCRATCH"]
    assert worker_env()["AWS_ENDPOINT_URL"] == "v-AWS_ENDPOINT_URL"
    assert sorted(worker_env(["AWS_ENDPOINT_URL", "AWS_*REGION"])) == [
        "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_REGION", "CURATE_SCRATCH"]
    assert sorted(worker_env([])) == ["CURATE_SCRATCH"]
    base = {"name": "p", "sources": [{"name": "s", "format": "jsonl", "paths": ["x"]}],
            "release": {"name": "r", "select": "true"}}
    assert (PipelineConfig(**base, executor={"kind": "ray", "forward_env": []}).config_hash()
            == PipelineConfig(**base, executor={"kind": "ray"}).config_hash())


def test_runtime_params_are_not_part_of_the_key():
    load_stages()
    a = MinHashSignatures({"threads": 1})
    b = MinHashSignatures({"threads": 8})
    assert a.key("m") == b.key("m")
    assert MinHashSignatures({"ngram": 4}).key("m") != a.key("m")  # an output param still counts
    grader = stage_class("llm_grader")
    g1 = grader({"inference": {"threads": 1, "batch_size": 4}})
    g2 = grader({"inference": {"threads": 2, "batch_size": 32, "timeout_s": 5}})
    assert g1.key("g") == g2.key("g")
    assert grader({"inference": {"model": "other"}}).key("g") != g1.key("g")
    ppl = stage_class("perplexity")
    p1 = ppl({"models": [{"name": "a", "inference": {"threads": 1}}]})
    p2 = ppl({"models": [{"name": "a", "inference": {"threads": 4, "batch_size": 2}}]})
    assert p1.key("p") == p2.key("p")


def test_model_stages_declare_resources():
    load_stages()
    grader = stage_class("llm_grader")
    assert grader.stateful and not LengthFilter.stateful
    assert grader({"inference": {"backend": "vllm"}}).resources().gpus == 1
    assert grader({"inference": {"backend": "transformers", "threads": 2}}).resources() == Resources(cpus=2)
    assert backend_resources([InferenceConfig(backend="openai")]) == Resources(cpus=1)
    assert LengthFilter().resources() == Resources()


def _lake(tmp_path, corpora) -> tuple[Lake, list[str]]:
    en = real_texts(corpora, "wiki_en", 300)
    make_lake(tmp_path, {"wiki_en": [en[:150], en[150:]]})
    lake = Lake(str(tmp_path))
    return lake, lake.raw_shards("wiki_en")


def test_threads_come_from_the_executor(tmp_path, corpora):
    lake, raws = _lake(tmp_path, corpora)
    stage = stage_class("test_where")()
    key = stage.key("where")
    tasks = [ShardTask("wiki_en", p, lake.annotation_path(key, p)) for p in raws]
    with LocalExecutor(ExecutorConfig(workers=2), show_progress=False) as ex:
        ex.run_stage("where", stage, tasks)
        expected = ex.threads_per_worker()
    assert {v for t in tasks for v in pq.read_table(t.out_path).column("threads").to_pylist()} == {expected}


def test_teardown_runs_once_per_setup_in_process_and_pool(tmp_path, corpora):
    lake, raws = _lake(tmp_path, corpora)
    for workers in (1, 2):
        log = tmp_path / f"log{workers}"
        stage = stage_class("test_setups")({"log": str(log)})
        key = stage.key(f"s{workers}")
        tasks = [ShardTask("wiki_en", p, lake.annotation_path(key, p)) for p in raws]
        with LocalExecutor(ExecutorConfig(workers=workers), show_progress=False) as ex:
            assert [r.status for r in ex.run_stage("s", stage, tasks)] == ["computed", "computed"]
        lines = log.read_text().split()
        setups = [lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "setup"]
        teardowns = [lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "teardown"]
        assert setups and sorted(setups) == sorted(teardowns), lines
        assert len(setups) <= workers  # one set-up per worker, not per shard


def test_fed_annotation_out_of_order_is_reported_not_silently_misaligned(tmp_path, corpora):
    lake, raws = _lake(tmp_path, corpora)
    length = LengthFilter({"min_words": 40})
    lkey = length.key("length")
    tasks = [ShardTask("wiki_en", p, lake.annotation_path(lkey, p)) for p in raws]
    with LocalExecutor(ExecutorConfig(workers=1), show_progress=False) as ex:
        ex.run_stage("length", length, tasks)
        # Reverse the rows of one annotation file: same row count, ids in another order.
        bad = pq.read_table(tasks[0].out_path)
        pq.write_table(bad.take(pa.array(range(bad.num_rows - 1, -1, -1))), tasks[0].out_path)

        class ReadsKeep(Stage):
            kind = "test_reads_keep"
            needs = ("text", "keep")

            def writes(self):
                return {"k2": pa.bool_()}

            def transform(self, batch):
                return batch.select("keep").rename({"keep": "k2"})

        reader = ReadsKeep()
        rkey = reader.key("reader")
        fed = [ShardTask("wiki_en", p, lake.annotation_path(rkey, p), (("keep", t.out_path, "keep"),))
               for p, t in zip(raws, tasks)]
        results = ex.run_stage("reader", reader, fed)
    assert [r.status for r in results] == ["failed", "computed"]
    assert "not aligned with its raw shard" in results[0].error
    got = pq.read_table(fed[1].out_path)
    assert got.column("k2").to_pylist() == pq.read_table(tasks[1].out_path).column("keep").to_pylist()
