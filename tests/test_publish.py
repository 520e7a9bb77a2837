"""The commit protocol of releases, on local disk and on a real S3 server: shards, then the manifest
as the commit record, then LATEST; readers see committed releases only; leftovers are cleaned; a
damaged manifest is named."""
from __future__ import annotations

import json

import pytest

from engines import storage
from warehouse.releasing import publish


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return f"{tmp_path}/lake/releases/demo"
    s3 = request.getfixturevalue("s3_server")
    return f"{s3.bucket()}/lake/releases/demo"


def _put(url: str, data: bytes) -> None:
    fs, p = storage.fs_and_path(url)
    fs.makedirs(storage.parent(p), exist_ok=True)
    fs.pipe_file(p, data)


def _release(root: str, version: str, created_at: str, chash: str, commit: bool = True) -> dict:
    """Write a two-shard release the way build_release does: shards first, then (maybe) the commit."""
    url = publish.prepare(root, version, chash)
    shards = []
    for i, payload in enumerate([b"first shard " * 10, b"second"]):
        _put(f"{url}/shard-{i:06d}.parquet", payload)
        shards.append({"file": f"shard-{i:06d}.parquet", "rows": 1, "tokens": 1, "bytes": len(payload), "sha256": "x"})
    manifest = {"name": "demo", "version": version, "content_hash": chash, "created_at": created_at,
                "shards": shards, "totals": {"rows": 2, "tokens": 2, "bytes": 0}}
    if commit:
        publish.commit(root, manifest)
    return manifest


def _names(url: str) -> set[str]:
    fs, p = storage.fs_and_path(url)
    fs.invalidate_cache(p)
    return {e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)} if fs.exists(p) else set()


def test_commit_then_readers(root):
    assert publish.latest_version(root) is None and publish.find_release(root, "h1") is None
    _release(root, "2026-01-01-aaaaaa", "2026-01-01T02:00:00+00:00", "h1")
    _release(root, "2026-01-02-bbbbbb", "2026-01-02T02:00:00+00:00", "h2")
    assert publish.latest_version(root) == "2026-01-02-bbbbbb"
    assert publish.find_release(root, "h1")["version"] == "2026-01-01-aaaaaa"
    assert storage.fs_and_path(f"{root}/LATEST")[0].cat_file(storage.fs_and_path(f"{root}/LATEST")[1]) \
        == b"2026-01-02-bbbbbb\n"
    lake_root = root.rsplit("/releases/", 1)[0]
    assert len(publish.published_shards(lake_root)) == 4
    assert publish.resolve(lake_root, "demo").endswith("/2026-01-02-bbbbbb")
    assert publish.resolve(lake_root, "demo/2026-01-01-aaaaaa").endswith("/2026-01-01-aaaaaa")


def test_uncommitted_and_scratch_are_invisible_and_cleaned(root):
    _release(root, "2026-01-01-aaaaaa", "2026-01-01T02:00:00+00:00", "h1")
    # A crash after the shards of a newer release, and scratch/pointer temporaries left behind.
    _release(root, "2026-01-02-bbbbbb", "2026-01-02T02:00:00+00:00", "h2", commit=False)
    _put(f"{root}/.tmp-2026-01-02-bbbbbb/000000.parquet", b"staged")
    _put(f"{root}/.tmp-123-abcd-LATEST", b"2026-01-02-bbbbbb\n")
    # A finished manifest in a scratch folder (issue 12) must not count either.
    _put(f"{root}/.tmp-2026-01-03-cccccc/manifest.json", json.dumps(
        {"name": "demo", "version": "2026-01-03-cccccc", "content_hash": "h3", "created_at": "2026-01-03",
         "shards": [], "totals": {}}).encode())
    assert publish.latest_version(root) == "2026-01-01-aaaaaa"
    assert publish.find_release(root, "h2") is None and publish.find_release(root, "h3") is None
    assert len(publish.published_shards(root.rsplit("/releases/", 1)[0])) == 2
    removed = publish.clean_leftovers(root)
    assert len(removed) == 4
    assert _names(root) == {"2026-01-01-aaaaaa", "LATEST"}


def test_latest_is_verified_against_the_manifests(root):
    _release(root, "2026-01-01-aaaaaa", "2026-01-01T02:00:00+00:00", "h1")
    m = _release(root, "2026-01-02-bbbbbb", "2026-01-02T02:00:00+00:00", "h2", commit=False)
    # Killed between the manifest and LATEST: the pointer still names the older version.
    publish.put_atomic(f"{root}/2026-01-02-bbbbbb/manifest.json", json.dumps(m).encode())
    assert publish.latest_version(root) == "2026-01-02-bbbbbb"
    assert publish.repair_latest(root) == "2026-01-02-bbbbbb"
    fs, p = storage.fs_and_path(f"{root}/LATEST")
    assert fs.cat_file(p) == b"2026-01-02-bbbbbb\n"
    # A pointer naming a version that was never committed falls back to the newest committed one.
    publish.put_atomic(f"{root}/LATEST", b"2027-01-01-ffffff\n")
    assert publish.latest_version(root) == "2026-01-02-bbbbbb"


def test_damaged_manifest_is_named_and_skipped(root):
    _release(root, "2026-01-01-aaaaaa", "2026-01-01T02:00:00+00:00", "h1")
    m = _release(root, "2026-01-02-bbbbbb", "2026-01-02T02:00:00+00:00", "h2")
    truncated = json.dumps(m).encode()[:40]
    fs, p = storage.fs_and_path(f"{root}/2026-01-02-bbbbbb/manifest.json")
    fs.pipe_file(p, truncated)
    with pytest.raises(publish.ManifestError, match="2026-01-02-bbbbbb/manifest.json is damaged or truncated"):
        publish.read_manifest(f"{root}/2026-01-02-bbbbbb/manifest.json")
    # Listings skip it (LATEST points at it: the newest committed release is used instead) ...
    assert publish.latest_version(root) == "2026-01-01-aaaaaa"
    assert publish.find_release(root, "h2") is None
    listing = publish.scan(root)
    assert list(listing.damaged) == [f"{root}/2026-01-02-bbbbbb"]
    # ... asking for it by name names the file ...
    lake_root = root.rsplit("/releases/", 1)[0]
    with pytest.raises(publish.ManifestError, match="manifest.json is damaged"):
        publish.resolve(lake_root, "demo/2026-01-02-bbbbbb")
    # ... clean-up leaves it for `curate check`, and writing that version again replaces it.
    publish.clean_leftovers(root)
    assert "2026-01-02-bbbbbb" in _names(root)
    _release(root, "2026-01-02-bbbbbb", "2026-01-02T03:00:00+00:00", "h2")
    assert publish.latest_version(root) == "2026-01-02-bbbbbb"


def test_missing_shard_makes_a_release_incomplete(root):
    _release(root, "2026-01-01-aaaaaa", "2026-01-01T02:00:00+00:00", "h1")
    fs, p = storage.fs_and_path(f"{root}/2026-01-01-aaaaaa/shard-000001.parquet")
    fs.rm(p)
    assert publish.latest_version(root) is None
    with pytest.raises(publish.ReleaseNotFound, match="no committed release named 'demo'"):
        publish.resolve(root.rsplit("/releases/", 1)[0], "demo")


def test_rejected_release_leaves_no_version_folder(root):
    _release(root, "2026-01-01-aaaaaa", "2026-01-01T02:00:00+00:00", "h1")
    _release(root, "2026-01-02-bbbbbb", "2026-01-02T02:00:00+00:00", "h2", commit=False)
    record = publish.reject(root, "2026-01-02-bbbbbb", {"name": "demo", "version": "2026-01-02-bbbbbb",
                                                         "gates": {"passed": False}})
    assert record.endswith("/_rejected/2026-01-02-bbbbbb.json")
    assert _names(root) == {"2026-01-01-aaaaaa", "LATEST", "_rejected"}
    assert publish.latest_version(root) == "2026-01-01-aaaaaa"


@pytest.mark.parametrize("planned", [False, True])
def test_build_release_on_s3_matches_local(tmp_path, corpora, s3_server, planned):
    """The whole release step on a lake in a real S3 server: the same shards, byte for byte, as on
    local disk; a failed gate there publishes nothing either."""
    import fsspec
    import pyarrow.parquet as pq

    from engines.executor import LocalExecutor, ShardTask
    from filters.length import LengthFilter
    from planning.release_plan import make_planner
    from schemas.config import ExecutorConfig, PipelineConfig
    from tests.helpers import make_lake, real_texts
    from warehouse.lake import Lake
    from warehouse.release import StageInfo, build_release
    from warehouse.releasing.gates import GateFailed

    local = tmp_path / "lake"
    make_lake(local, {"wiki_en": [real_texts(corpora, "wiki_en", 300)], "wiki_fr": [real_texts(corpora, "wiki_fr", 200)]})
    stage = LengthFilter({"min_words": 20})
    key = stage.key("length")
    lake = Lake(str(local))
    with LocalExecutor(ExecutorConfig(workers=1), show_progress=False) as ex:
        ex.run_stage("length", stage, [ShardTask(s, p, lake.annotation_path(key, p))
                                       for s in ("wiki_en", "wiki_fr") for p in lake.raw_shards(s)])
    remote = f"{s3_server.bucket()}/lake"
    fs, rpath = fsspec.core.url_to_fs(remote)
    fs.put(str(local) + "/", rpath, recursive=True)
    info = [StageInfo("length", key, list(stage.writes()), None)]
    release = {"name": "rel", "select": "length.keep", "shard_rows": 70, "seed": 3}
    if planned:
        release.update(order="shuffle", mixture={"method": "unimax", "max_epochs": 2})

    def build(root: str, **kw):
        cfg = PipelineConfig.model_validate({"name": "t", "lake": root, "release": release, "sources": [
            {"name": s, "format": "parquet", "paths": ["x"]} for s in ("wiki_en", "wiki_fr")]})
        planner = make_planner(release.get("mixture"), None, None, 3) if planned else None
        return build_release(cfg, Lake(root), info, "r", "test", planner=planner, **kw)[0]

    here, there = build(str(local)), build(remote)
    assert here["version"] == there["version"] and here["content_hash"] == there["content_hash"]
    assert [s["sha256"] for s in here["shards"]] == [s["sha256"] for s in there["shards"]] and len(here["shards"]) > 2
    root = f"{remote}/releases/rel"
    assert publish.latest_version(root) == there["version"]
    fs.invalidate_cache()
    got = pq.read_table(fs.open(f"{rpath}/releases/rel/{there['version']}/shard-000000.parquet", "rb"))
    assert got.num_rows == there["shards"][0]["rows"]
    assert sorted(_names(root)) == sorted([there["version"], "LATEST"])
    # A gate that fails on S3: nothing published, LATEST unchanged, the record kept.
    release["select"] = "length.keep and length.n_words > 100000"
    with pytest.raises(GateFailed) as err:
        build(remote)
    assert publish.latest_version(root) == there["version"]
    assert sorted(_names(root)) == sorted([there["version"], "LATEST", "_rejected"])
    assert err.value.record.startswith("s3://") and _names(f"{root}/_rejected") == {f"{err.value.version}.json"}
