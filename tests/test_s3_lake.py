"""The demo pipeline with its lake on a real S3-protocol server (moto's standalone server) gives
the same release, byte for byte, as the same pipeline on a local disk; the catalog and
``curate sql`` read the release shards on S3."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
import yaml

from engines import storage
from flows.pipeline import run_pipeline
from tests.helpers import REWRITES, demo_config, share_cache
from warehouse.catalog import Catalog
from warehouse.lake import Lake

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# Left out: model-backed stages (their caches are tested in tests/test_storage.py) and what reads them;
# the rewrite stage runs (derived sources on S3), its generations shared through the lake's cache.
# Kept: ingest of every format, per-shard filters, and the global stages whose artifacts are folders
# written with local-file APIs (line and exact dedup, decontamination, MinHash, fastText training,
# perplexity correlation).
SLOW_KINDS = ("llm_grader", "perplexity", "embed", "semantic_dedup")


def _shards(release_path: str) -> dict[str, str]:
    """sha256 of each release shard, read through fsspec (local path or s3:// URL)."""
    fs, root = fsspec.core.url_to_fs(release_path)
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[-1]: hashlib.sha256(fs.cat_file(p)).hexdigest()
            for p in sorted(fs.glob(f"{root}/shard-*.parquet"))}


@pytest.fixture(scope="module")
def runs(s3_server, demo_dir, tmp_path_factory, model_results):
    root = tmp_path_factory.mktemp("s3demo")
    os.environ["CURATE_SCRATCH"] = str(root / "scratch")  # remote-lake copies, caches and the catalog
    bucket = s3_server.bucket()
    out = {}
    for name, lake in (("local", str(root / "lake")), ("s3", f"{bucket}/lake")):
        cfg = demo_config(demo_dir, lake, drop_kinds=SLOW_KINDS)  # model stages are not the subject here
        cfg["release"]["select"] = cfg["release"]["select"].replace(" and sem.keep", "")
        cfg["executor"]["workers"] = 2
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        if name == "local":  # the session's rewrites where a module made them already
            share_cache(model_results, lake, REWRITES, required=False)
        out[name] = run_pipeline(str(root / f"{name}.yaml"))
        if name == "local":
            share_cache(root / "lake", f"{bucket}/lake")
            share_cache(root / "lake", model_results, REWRITES)
    out["root"], out["bucket"] = root, bucket
    yield out
    os.environ.pop("CURATE_SCRATCH", None)


def test_release_on_s3_is_byte_identical_to_local(runs):
    local, s3 = runs["local"]["release"], runs["s3"]["release"]
    assert s3["path"].startswith("s3://")
    assert s3["version"] == local["version"] and s3["rows"] == local["rows"] > 200
    shards = _shards(s3["path"])
    assert shards and shards == _shards(local["path"])
    fs = fsspec.filesystem("s3")
    manifest = json.loads(fs.cat_file(f"{s3['path']}/manifest.json"))
    assert {s["sha256"] for s in manifest["shards"]} == set(shards.values())


def test_s3_run_took_every_rewrite_from_the_lake_cache(runs):
    """The derived documents on S3 came from the segment another "machine" (the local run) left on
    the lake, and they are the same documents (the release shards above are byte-identical)."""
    def summary(lake: str) -> list[tuple]:
        return Catalog.of_lake(lake).query(
            "SELECT route, generated, kept, from_cache FROM rewrite_summary ORDER BY route")[1]
    local, s3 = summary(str(runs["root"] / "lake")), summary(f"{runs['bucket']}/lake")
    # (The local run generated them, or took them from the session's model_results.)
    assert local and all(r[1] > 0 for r in local)
    assert [r[:3] for r in s3] == [r[:3] for r in local] and all(r[3] == r[1] for r in s3)


def test_lake_on_s3_holds_everything_and_no_temporary_objects(runs):
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    keys = fs.find(f"{runs['bucket']}/lake")
    tops = {k.split("/")[2] for k in keys}
    assert {"raw", "annotations", "artifacts", "releases"} <= tops
    assert not [k for k in keys if "/.tmp-" in k or ".tmp-" in k.rsplit("/", 1)[-1]]
    assert not [k for k in keys if k.endswith((".sqlite", ".duckdb"))]  # databases stay local
    # Every global stage's artifact folder (an incremental index keeps its state in s-<id>/) has its marker.
    arts = {k.split("/")[3] for k in keys if k.split("/")[2] == "artifacts"}
    marked = {k.split("/")[3] for k in keys if k.split("/")[2] == "artifacts" and k.endswith("/_fit.json")}
    assert len(arts) >= 5 and marked == arts


def test_catalog_reads_release_shards_on_s3(runs):
    lake = Lake(f"{runs['bucket']}/lake")
    assert not lake.catalog_path.startswith("s3://") and Path(lake.catalog_path).exists()
    cat = Catalog.of_lake(lake.root)
    _, rows = cat.query("SELECT count(*) FROM release_shards")
    assert rows[0][0] == runs["s3"]["release"]["rows"]
    _, local_rows = Catalog.of_lake(str(runs["root"] / "lake")).query(
        "SELECT stage, count(*) FROM stage_runs GROUP BY stage ORDER BY stage")
    _, s3_rows = cat.query("SELECT stage, count(*) FROM stage_runs GROUP BY stage ORDER BY stage")
    assert s3_rows == local_rows


def test_curate_sql_on_s3_release(runs):
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--lake", f"{runs['bucket']}/lake", "--json",
                           "SELECT source, count(*) AS n FROM release_shards GROUP BY source ORDER BY source"],
                          cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = {r["source"]: r["n"] for r in map(json.loads, proc.stdout.splitlines())}
    assert sum(got.values()) == runs["s3"]["release"]["rows"]
    # The read-only door holds on S3 too: a prefix outside the lake's data folders is refused.
    outside = f"{runs['bucket']}/secrets/keys.parquet"
    storage.write_table_atomic(outside, pa.table({"k": ["value-nobody-may-read"]}))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--lake", f"{runs['bucket']}/lake",
                           f"SELECT * FROM read_parquet('{outside}')"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "refused" in proc.stdout, proc.stdout + proc.stderr
    assert "value-nobody-may-read" not in proc.stdout + proc.stderr


def test_rerun_on_s3_computes_nothing(runs):
    again = run_pipeline(str(runs["root"] / "s3.yaml"))
    assert all(s["computed"] == 0 for s in again["stages"])
    assert again["release"]["version"] == runs["s3"]["release"]["version"] and not again["release"]["created"]


def test_export_reads_a_release_on_s3(runs, tmp_path):
    from warehouse.export import export_release
    for name in ("local", "s3"):
        export_release(runs[name]["release"]["path"], tmp_path / name, "jsonl")
    files = sorted(p.name for p in (tmp_path / "s3").iterdir() if p.name != "export.json")
    assert files and files == sorted(p.name for p in (tmp_path / "local").iterdir() if p.name != "export.json")
    for f in files:
        assert (tmp_path / "s3" / f).read_bytes() == (tmp_path / "local" / f).read_bytes()
