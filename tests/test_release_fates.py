"""The release step writes the per-document fates file the report reads (warehouse/releasing/
fates_file.py): the same rows the report's replay of the decisions computes, beside the report of
a published release and of a rejected one, and nothing left in the release's scratch."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from planning.release_plan import make_planner
from tests.test_release import _setup
from warehouse.release import build_release
from warehouse.releasing.gates import GateFailed
from warehouse.releasing.publish import SCRATCH
from warehouse.report.context import load_context
from warehouse.report.fates import ensure_fates


def _replayed(lake, name: str, version: str, info, rejected: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the release's fates file, the same file computed again by the report's replay)."""
    ctx = load_context(lake, name, version, stages=info, rejected=rejected)
    path = Path(ensure_fates(ctx))
    written = pl.read_parquet(path)
    path.unlink()
    replayed = pl.read_parquet(ensure_fates(ctx))
    return written, replayed


@pytest.mark.parametrize("order", ["ingest", "shuffle"])
def test_release_writes_the_fates_the_report_replays(tmp_path, corpora, order):
    cfg, lake, info, _ = _setup(tmp_path, corpora, order=order)
    # One missing annotation file: its shard's rows are quarantined (a reason the fates spell differently).
    Path(lake.annotation_path(info[0].key, lake.raw_shards("wiki_en")[1])).unlink()
    planner = make_planner(None, None, None, 7) if order == "shuffle" else None
    manifest, created = build_release(cfg, lake, info, "run-1", "test", planner=planner, accept_gates=True)
    assert created
    path = tmp_path / "reports" / "rel" / manifest["version"] / "fates.parquet"
    assert path.exists(), "the release step writes the fates file beside the report"
    written, replayed = _replayed(lake, "rel", manifest["version"], info)
    assert_frame_equal(written, replayed)
    assert written.height == sum(a["rows_in"] for a in manifest["sources"].values()) == 800
    assert written.filter(pl.col("fate") == "kept").height == sum(a["rows_kept"] for a in manifest["sources"].values())
    got = {(r["source"], r["stage"], r["reason"]): r["len"] for r in written.filter(pl.col("fate") != "kept")
           .group_by("source", "stage", "reason").len().to_dicts()}
    assert got == {(d["source"], d["stage"], d["reason"]): d["rows"] for d in manifest["drop_reasons"]}
    assert any(r.startswith("quarantined: ") for _, _, r in got)
    assert not [p for p in Path(lake.release_dir("rel")).iterdir() if p.name.startswith(SCRATCH)]


def test_rejected_release_writes_its_fates_beside_its_report(tmp_path, corpora):
    cfg, lake, info, _ = _setup(tmp_path, corpora)
    Path(lake.annotation_path(info[0].key, lake.raw_shards("wiki_en")[1])).unlink()  # half of wiki_en quarantined
    with pytest.raises(GateFailed) as err:
        build_release(cfg, lake, info, "run-1", "test")
    version = err.value.version
    assert (tmp_path / "reports" / "rel" / "_rejected" / version / "fates.parquet").exists()
    assert not (tmp_path / "reports" / "rel" / version).exists()
    written, replayed = _replayed(lake, "rel", version, info, rejected=True)
    assert_frame_equal(written, replayed)
    assert written.height == 800
    assert not [p for p in Path(lake.release_dir("rel")).iterdir() if p.name.startswith(SCRATCH)]
