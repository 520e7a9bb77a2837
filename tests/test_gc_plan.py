"""What `curate gc` counts as referenced, on a local lake and on object storage (a real S3 server).

The lake here is laid out by hand (small files under the real folder names), so every case of
warehouse/gc.py is present at once: annotations a release names, annotations of a current key,
orphaned annotations, a pinned index state beside a superseded one and an unfinished update,
an unfinished fit, a live pin and a retired one. The flow-level test (tests/test_nightly.py)
makes these by real runs; this one checks the rules one by one, and that deleting works the
same through fsspec on S3.
"""
from __future__ import annotations

import json

import pytest

from engines import storage
from warehouse.catalog import Catalog
from warehouse.gc import References, collect, plan
from warehouse.lake import Lake
from warehouse.pins import write_json


def _put(url: str, data: bytes = b"x" * 100) -> None:
    fs, p = storage.fs_and_path(url)
    fs.makedirs(storage.parent(p), exist_ok=True)
    with fs.open(p, "wb") as f:
        f.write(data)


def _build(root: str) -> tuple[Lake, References]:
    lake = Lake(root)
    for key in ("len@1-aaa", "len@1-bbb", "len@1-old", "q@2-ccc-fit11", "q@2-ddd-fit22", "dd@1-eee-inc33"):
        _put(f"{root}/annotations/{key}/src/ing-1/part-00000-000.parquet")
    _put(f"{root}/artifacts/q@2-ccc-fit11/model.ftz", b"m" * 1000)  # released model
    _put(f"{root}/artifacts/q@2-ddd-fit22/model.ftz", b"m" * 1000)  # a retired pin's, never released
    _put(f"{root}/artifacts/dd@1-eee-inc33/s-new/index.parquet")
    _put(f"{root}/artifacts/dd@1-eee-inc33/s-old/index.parquet")
    _put(f"{root}/artifacts/dd@1-eee-inc33/s-next.tmp-abc123/index.parquet")
    _put(f"{root}/artifacts/q@2-ccc-fit99.tmp-def456/model.ftz")
    _put(f"{root}/raw/src/ing-1/part-00000-000.parquet")
    _put(f"{root}/cache/llm/abc.parquet")
    write_json(f"{root}/releases/r/v1/manifest.json", {"name": "r", "version": "v1",
                                                          "inputs": {"stages": {"len": "len@1-aaa", "q": "q@2-ccc-fit11"}}})
    write_json(f"{root}/pins/q@2-ccc.json", {"stage_key": "q@2-ccc", "fit_key": "q@2-ccc-fit11",
                                             "artifact": "artifacts/q@2-ccc-fit11"})
    write_json(f"{root}/pins/q@2-ddd.json", {"stage_key": "q@2-ddd", "fit_key": "q@2-ddd-fit22",
                                             "artifact": "artifacts/q@2-ddd-fit22"})
    write_json(f"{root}/pins/dd@1-eee.json", {"stage_key": "dd@1-eee", "fit_key": "dd@1-eee-inc33",
                                              "artifact": "artifacts/dd@1-eee-inc33/s-new"})
    # The current pipeline: len with other params than the release's, the same q, the same dd.
    refs = References(stage_keys={"len@1-bbb", "q@2-ccc", "dd@1-eee"},
                      current={"len@1-bbb", "q@2-ccc-fit11", "dd@1-eee-inc33"})
    return lake, refs


EXPECTED = {
    ("annotations/len@1-old", "annotations"),
    ("annotations/q@2-ddd-fit22", "annotations"),
    ("artifacts/q@2-ddd-fit22", "artifact"),
    ("artifacts/q@2-ccc-fit99.tmp-def456", "unfinished fit"),
    ("artifacts/dd@1-eee-inc33/s-old", "index state"),
    ("artifacts/dd@1-eee-inc33/s-next.tmp-abc123", "unfinished fit"),
    ("pins/q@2-ddd.json", "pin"),
}


def _check(root: str, catalog: Catalog | None) -> None:
    lake, refs = _build(root)
    garbage = plan(lake, refs)
    assert {(g.path, g.what) for g in garbage} == EXPECTED
    assert {g.path: g.bytes for g in garbage}["artifacts/q@2-ddd-fit22"] == 1000
    fs, _ = storage.fs_and_path(root)
    before = set(fs.find(storage.fs_and_path(root)[1]))
    record = collect(lake, garbage, ["p.yaml"], catalog)
    after = set(fs.find(storage.fs_and_path(root)[1]))
    gone = {p for p in before - after}
    base = storage.fs_and_path(root)[1]
    assert all(any(p.startswith(f"{base}/{g.path}") for g in garbage) for p in gone)
    for path, _ in EXPECTED:
        assert not storage.exists(f"{root}/{path}")
    for kept in ("annotations/len@1-aaa", "annotations/len@1-bbb", "annotations/q@2-ccc-fit11",
                 "annotations/dd@1-eee-inc33", "artifacts/q@2-ccc-fit11/model.ftz", "artifacts/dd@1-eee-inc33/s-new",
                 "raw/src/ing-1/part-00000-000.parquet", "cache/llm/abc.parquet", "releases/r/v1/manifest.json",
                 "pins/q@2-ccc.json", "pins/dd@1-eee.json"):
        assert storage.exists(f"{root}/{kept}"), kept
    fs2, p2 = storage.fs_and_path(f"{root}/gc/{record['gc_id']}.json")
    with fs2.open(p2, "r") as f:
        saved = json.load(f)
    assert saved["status"] == "done" and len(saved["removed"]) == len(EXPECTED)
    assert saved["bytes"] == sum(g.bytes for g in garbage)
    assert plan(lake, refs) == [], "a second pass finds nothing"


def test_gc_rules_on_a_local_lake(tmp_path):
    cat = Catalog(str(tmp_path / "catalog.duckdb"))
    _check(str(tmp_path), cat)
    cols, rows = cat.query("SELECT what, count(*) FROM gc_removed GROUP BY what ORDER BY what")
    assert dict(rows) == {"annotations": 2, "artifact": 1, "index state": 1, "pin": 1, "unfinished fit": 2}


def test_gc_rules_on_object_storage(s3_server):
    _check(s3_server.bucket(), None)


@pytest.mark.parametrize("refs", [References(), References(stage_keys={"x"}, current={"x"})])
def test_gc_keeps_everything_a_release_names(tmp_path, refs):
    """With no current pipeline at all, released keys and their models stay."""
    lake, _ = _build(str(tmp_path))
    paths = {g.path for g in plan(lake, refs)}
    assert "annotations/len@1-aaa" not in paths and "artifacts/q@2-ccc-fit11" not in paths
    assert "pins/q@2-ccc.json" not in paths  # its key is released
    assert "annotations/len@1-bbb" in paths  # only the current pipeline wanted it
