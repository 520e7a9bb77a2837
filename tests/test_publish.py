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
