"""The storage layer's primitives on ``memory://`` (single process), plus killed writes on local disk and S3."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines import storage
from engines.inference.cache import ResultCache, VectorCache
from engines.stage import StageContext
from engines.storage_dirs import local_dir, staged_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mem() -> str:
    """A fresh ``memory://`` lake root."""
    return f"memory://lake-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CURATE_SCRATCH", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def _names(url: str) -> list[str]:
    fs, path = storage.fs_and_path(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(path))


def test_parquet_write_lands_on_the_memory_filesystem(mem):
    url = f"{mem}/annotations/s@1-x/src/ing/part-00000-000.parquet"
    table = pa.table({"id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0]})
    with storage.atomic_path(url) as tmp:
        assert tmp.startswith("memory://"), tmp  # the temporary name stays on the lake's filesystem
        w = storage.parquet_writer(tmp, table.schema)
        w.write_table(table)
        w.close()
    assert storage.parquet_rows(url) == 3
    assert _names(f"{mem}/annotations") == ["part-00000-000.parquet"]  # no temporary file left
    assert storage.glob(f"{mem}/annotations/*/*/*/part-*.parquet") == [url]  # listed as it was named
    fs, p = storage.fs_and_path(url)
    with fs.open(p, "rb") as f:
        assert pq.read_table(f).equals(table)
    assert not os.path.exists(p.lstrip("/")) and not os.path.exists(p)  # nothing went to the local disk


def test_a_failed_write_leaves_nothing(mem):
    url = f"{mem}/raw/src/ing/part-00000-000.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_path(url) as tmp:
            fs, p = storage.fs_and_path(tmp)
            with fs.open(p, "wb") as f:
                f.write(b"PAR1 half a file")
            raise RuntimeError("boom")
    assert not storage.exists(url)
    assert _names(mem) == []


def test_bytes_and_tables(mem):
    storage.write_bytes_atomic(f"{mem}/raw/s/i/_done/00000.json", b'{"parts": []}')
    storage.write_bytes_atomic(f"{mem}/raw/s/i/_done/00000.json", b'{"parts": [1]}')  # replaces
    assert json.loads(storage.fs_and_path(mem)[0].cat_file(f"{mem}/raw/s/i/_done/00000.json")) == {"parts": [1]}
    storage.write_table_atomic(f"{mem}/quarantine/r/s/00000.parquet", pa.table({"error": ["bad utf-8"]}))
    assert storage.parquet_rows(f"{mem}/quarantine/r/s/00000.parquet") == 1


def test_staged_dir_publishes_marker_last_and_reads_back_locally(mem, scratch):
    art = f"{mem}/artifacts/dedup@1-abc-fit123"
    # A leftover of a killed upload (files, no marker) must not survive into the published folder.
    storage.write_bytes_atomic(f"{art}/stale.bin", b"old")
    order: list[str] = []
    fs, _ = storage.fs_and_path(mem)
    real_put = fs.put_file

    def recording_put(lpath, rpath, **kw):
        order.append(rpath.rsplit("/", 1)[-1])
        return real_put(lpath, rpath, **kw)

    fs.put_file = recording_put  # type: ignore[method-assign]
    try:
        with staged_dir(art, marker="_fit.json") as local:
            assert os.path.isdir(local) and not local.startswith("memory")
            Path(local, "sub").mkdir()
            Path(local, "sub", "vectors.bin").write_bytes(b"\x01\x02")
            Path(local, "_fit.json").write_text("{}")
            Path(local, "zz_last_alphabetically.txt").write_text("x")
    finally:
        del fs.put_file
    assert order[-1] == "_fit.json"
    assert _names(art) == ["_fit.json", "vectors.bin", "zz_last_alphabetically.txt"]
    got = local_dir(art)
    assert Path(got, "sub", "vectors.bin").read_bytes() == b"\x01\x02"
    assert str(scratch) in got
    # Through the stage context, as a stage's setup sees it: a local folder.
    ctx = StageContext(artifact_dir=art)
    assert ctx.artifact_dir == got
    assert StageContext().artifact_dir is None
    local = StageContext(artifact_dir="/some/local/dir")
    assert local.artifact_dir == "/some/local/dir"


def test_staged_dir_publishes_nothing_on_failure(mem):
    art = f"{mem}/artifacts/x@1-a"
    with pytest.raises(ValueError):
        with staged_dir(art, marker="_fit.json") as local:
            Path(local, "model.bin").write_bytes(b"half")
            raise ValueError("fit failed")
    assert not storage.exists(art)


def test_staged_dir_on_local_disk_is_one_rename(tmp_path):
    art = tmp_path / "lake" / "artifacts" / "x@1-a"
    art.parent.mkdir(parents=True)
    with staged_dir(str(art), marker="_fit.json") as local:
        assert Path(local).parent == art.parent  # a sibling: the rename stays on one filesystem
        Path(local, "_fit.json").write_text("{}")
    assert sorted(os.listdir(art)) == ["_fit.json"]
    assert sorted(os.listdir(art.parent)) == ["x@1-a"]
    assert local_dir(str(art)) == str(art)


def test_result_cache_on_a_remote_lake(mem, tmp_path, monkeypatch):
    url = f"{mem}/cache/llm_results.sqlite"
    a = ResultCache(url)
    a.put_many({"k1": {"score": 0.5}, "k2": {"score": 1.0}})
    a.put_many({"k3": {"score": 0.0}})
    segments = _names(f"{mem}/cache/llm_results")
    assert len(segments) == 2 and all(s.startswith("seg-") for s in segments)
    assert not storage.exists(url)  # no SQLite file on the lake
    # Another machine: its own scratch folder, so only the lake's segments can answer.
    monkeypatch.setenv("CURATE_SCRATCH", str(tmp_path / "other-machine"))
    b = ResultCache(url)
    assert b.path != a.path
    assert b.get_many(["k1", "k3", "missing"]) == {"k1": {"score": 0.5}, "k3": {"score": 0.0}}
    assert b.sync() == 0  # nothing new since it opened
    a.put_many({"k4": {"score": 2.0}})
    assert b.sync() == 1 and b.get_many(["k4"]) == {"k4": {"score": 2.0}}
    import pickle
    c = pickle.loads(pickle.dumps(b))  # shipped to a worker: reopens by URL
    assert c.get_many(["k2"]) == {"k2": {"score": 1.0}}
    v = VectorCache(f"{mem}/cache/embeddings.sqlite")
    v.put_many({"e": b"\x00\x01"})
    assert VectorCache(f"{mem}/cache/embeddings.sqlite").get_many(["e"]) == {"e": b"\x00\x01"}
    for cache in (a, b, c, v):
        cache.close()


def test_result_cache_on_a_local_lake_stays_one_sqlite_file(tmp_path):
    path = tmp_path / "lake" / "cache" / "llm_results.sqlite"
    c = ResultCache(path)
    c.put_many({"k": 1})
    assert c.path == path and path.exists()
    assert sorted(os.listdir(path.parent)) == ["llm_results.sqlite", "llm_results.sqlite-shm", "llm_results.sqlite-wal"]
    c.close()


_KILLED_WRITER = """
import sys
import pyarrow as pa
from engines import storage
url = sys.argv[1]
table = pa.table({"id": [str(i) for i in range(50_000)], "text": ["word " * 20] * 50_000})
with storage.atomic_path(url) as tmp:
    w = storage.parquet_writer(tmp, table.schema)
    w.write_table(table)
    w.close()
"""


def _killed_write(url: str) -> None:
    env = {**os.environ, "CURATE_FAULT": "storage:before_commit"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, url], cwd=REPO, env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]  # SIGKILLed after writing, before the commit


def test_a_killed_write_leaves_no_partial_file_local(tmp_path):
    url = str(tmp_path / "lake" / "raw" / "s" / "i" / "part-00000-000.parquet")
    _killed_write(url)
    assert not os.path.exists(url)
    assert storage.glob(str(tmp_path / "lake" / "raw" / "s" / "i" / "part-*.parquet")) == []
    leftovers = os.listdir(Path(url).parent)
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")  # only a hidden temporary name


def test_a_killed_write_leaves_no_partial_object_s3(s3_server):
    bucket = s3_server.bucket()
    url = f"{bucket}/lake/raw/s/i/part-00000-000.parquet"
    _killed_write(url)
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert not fs.exists(url)
    assert storage.glob(f"{bucket}/lake/raw/s/i/part-*.parquet") == []
    assert all(p.rsplit("/", 1)[-1].startswith(".tmp-") for p in fs.find(f"{bucket}/lake"))
    # The same write, not killed, publishes the whole object.
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, url], cwd=REPO, check=True)
    fs.invalidate_cache()
    assert storage.parquet_rows(url) == 50_000


_KILLED_PUBLISH = """
import sys
from pathlib import Path
from engines.storage_dirs import staged_dir
with staged_dir(sys.argv[1], marker="_fit.json") as d:
    Path(d, "model.bin").write_bytes(sys.argv[2].encode() * 1000)
    Path(d, "_fit.json").write_text("{}")
"""


def test_a_fit_killed_mid_upload_is_not_a_fit_and_is_replaced_s3(s3_server):
    art = f"{s3_server.bucket()}/lake/artifacts/q@1-abc-fit0"
    env = {**os.environ, "CURATE_FAULT": "storage:before_marker"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_PUBLISH, art, "old"], cwd=REPO, env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.exists(f"{art}/model.bin") and not fs.exists(f"{art}/_fit.json")  # the marker decides: no fit
    subprocess.run([sys.executable, "-c", _KILLED_PUBLISH, art, "new"], cwd=REPO, check=True)
    fs.invalidate_cache()
    assert fs.exists(f"{art}/_fit.json") and fs.cat_file(f"{art}/model.bin") == b"new" * 1000


def test_a_lake_on_memory_lists_its_shards_under_its_own_root(mem):
    from warehouse.lake import Lake
    lake = Lake(mem)
    part = f"{lake.raw_dir('wiki', 'ing-1')}/part-00000-000.parquet"
    storage.write_table_atomic(part, pa.table({"id": ["a"], "text": ["x"]}))
    storage.write_bytes_atomic(f"{lake.raw_dir('wiki', 'ing-1')}/_done/00000.json", json.dumps({
        "source": "wiki", "file": "in.jsonl", "file_index": 0, "fingerprint": "fp", "ingest_run": "ing-1",
        "parts": [{"path": part, "rows": 1, "text_bytes": 1}], "ingested_at": "2026-01-01T00:00:00"}).encode())
    assert lake.shards_by_age(["wiki"]) == [("wiki", part)]
    assert lake.annotation_path("s@1-x", part) == f"{mem}/annotations/s@1-x/wiki/ing-1/part-00000-000.parquet"
    assert not lake.catalog_path.startswith("memory://")
