"""The pipeline's `ablation:` block through the real Prefect flow: each new release is ablated
against its parent, the parent's runs are reused, and a missing decontamination is refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flows.pipeline import run_pipeline
from schemas.config import ConfigError
from tests.ablation.conftest import HELDOUT
from warehouse.catalog import Catalog

pytestmark = pytest.mark.slow


def _pipeline(root: Path, decontaminate: bool = True) -> Path:
    heldout = {"name": "wiki", "path": str(HELDOUT), "text_field": "text"}
    cfg = {
        "name": "abl", "lake": str(root / "lake"), "executor": {"workers": 1},
        "sources": [{"name": "wiki_en", "format": "parquet", "paths": ["data/wiki_en*.parquet"],
                     "columns": {"text": "text", "id": "url", "url": "url"}}],
        "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 20}}],
        "release": {"name": "abl", "select": "length.keep", "shard_rows": 100},
        "ablation": {"compare": ["parent"], "settings": {
            "model": {"preset": "test"}, "budget_tokens": 3 * 4 * 64, "seq_len": 64, "batch_size": 4, "seeds": [0, 1],
            "eval": {"points": 1, "heldout": [{"name": "wiki", "path": str(HELDOUT), "max_docs": 8}]}}},
    }
    if decontaminate:
        cfg["stages"].append({"name": "decontam", "kind": "decontaminate", "params": {"benchmarks": [heldout]}})
        cfg["release"]["select"] = "length.keep and decontam.keep"
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_each_release_is_ablated_against_its_parent(tmp_path: Path, demo_dir: Path, corpora: Path) -> None:
    shutil.copytree(demo_dir / "data", tmp_path / "data")
    pipeline = _pipeline(tmp_path)
    first = run_pipeline(str(pipeline))
    assert first["ablation"]["releases"] == [f"abl/{first['release']['version']}"]
    pq.write_table(pq.read_table(corpora / "wiki_en.parquet").slice(3000, 150), tmp_path / "data" / "wiki_en_new.parquet")
    night = run_pipeline(str(pipeline))
    old, new = f"abl/{first['release']['version']}", f"abl/{night['release']['version']}"
    assert night["ablation"]["releases"] == [old, new]
    [diff] = [r for r in night["ablation"]["summary"] if r["metric"] == "bpb/wiki" and r["release"] == new]
    assert diff["baseline"] == old and len(diff["diffs"]) == 2
    cat = Catalog(str(tmp_path / "lake" / "catalog.duckdb"))
    _, rows = cat.query("SELECT ablation_id, release, seed, run_key, decontaminated FROM ablations ORDER BY ablation_id")
    assert len(rows) == 2 + 4 and all(r[4] for r in rows)
    keys: dict[tuple[str, int], list[str]] = {}
    for _, rel, seed, key, _ in rows:
        keys.setdefault((rel, seed), []).append(key)
    # the parent's runs are in both ablations under one key each: reused, not retrained
    assert [len(keys[(old, s)]) for s in (0, 1)] == [2, 2] and all(len(set(keys[(old, s)])) == 1 for s in (0, 1))
    assert len(list((tmp_path / "lake" / "ablations" / "runs").iterdir())) == 4


def test_a_release_not_decontaminated_against_the_eval_set_is_refused(tmp_path: Path, demo_dir: Path) -> None:
    shutil.copytree(demo_dir / "data", tmp_path / "data")
    out = run_pipeline(str(_pipeline(tmp_path, decontaminate=False)))
    assert out["release"]["created"]  # the release stands
    assert "did not decontaminate against this file" in out["ablation"]["error"]
    assert Catalog(str(tmp_path / "lake" / "catalog.duckdb")).query("SELECT count(*) FROM ablations")[1] == [(0,)]


def test_a_bad_ablation_block_fails_before_any_work(tmp_path: Path, demo_dir: Path) -> None:
    shutil.copytree(demo_dir / "data", tmp_path / "data")
    path = _pipeline(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["ablation"]["settings"]["budget_tokens"] = -1
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="budget_tokens"):
        run_pipeline(str(path))
    assert not (tmp_path / "lake").exists()
