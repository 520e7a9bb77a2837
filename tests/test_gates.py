"""Release gates on real text: an empty or quarantined source, a planted 90% drop and a night far from
its parent stop the release (nothing published, LATEST unchanged, the reason recorded); warnings;
``accept_gates`` publishes deliberately."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.executor import LocalExecutor, ShardTask
from filters.length import LengthFilter
from schemas.config import ExecutorConfig, PipelineConfig
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake
from warehouse.release import StageInfo, build_release, latest_version
from warehouse.releasing.gates import GateFailed


def _lake(root: Path, corpora: Path, min_words: int, sources: dict[str, list[list[str]]] | None = None,
          gates: dict | None = None, select: str = "length.keep"):
    sources = sources or {"wiki_en": [real_texts(corpora, "wiki_en", 400)], "wiki_es": [real_texts(corpora, "wiki_es", 200)]}
    if not (root / "raw").exists():
        make_lake(root, sources)
    lake = Lake(str(root))
    stage = LengthFilter({"min_words": min_words})
    key = stage.key("length")
    tasks = [ShardTask(s, p, lake.annotation_path(key, p)) for s in sources for p in lake.raw_shards(s)]
    with LocalExecutor(ExecutorConfig(workers=1), show_progress=False) as ex:
        ex.run_stage("length", stage, tasks)
    cfg = PipelineConfig.model_validate({
        "name": "t", "lake": str(root),
        "sources": [{"name": s, "format": "parquet", "paths": ["x"]} for s in sources],
        "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": min_words}}],
        "release": {"name": "rel", "select": select, "shard_rows": 100, "gates": gates or {}}})
    return cfg, lake, [StageInfo("length", key, list(stage.writes()), None)]


def _nothing_published(lake: Lake, before: str | None) -> None:
    root = Path(lake.release_dir("rel"))
    assert latest_version(lake, "rel") == before
    if before is None:
        assert not (root / "LATEST").exists()
    else:
        assert (root / "LATEST").read_text().strip() == before
    versions = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))] if root.exists() else []
    assert versions == ([before] if before else [])


def test_defaults_pass_ordinary_curation(tmp_path, corpora):
    cfg, lake, info = _lake(tmp_path, corpora, min_words=10)
    m, created = build_release(cfg, lake, info, "r1", "test")
    assert created and m["gates"]["passed"] and not m["gates"]["accepted"]
    assert {c["gate"] for c in m["gates"]["checks"] if c["outcome"] == "pass"} >= {
        "min_rows", "min_source_rows", "max_drop_rate", "max_quarantine_rate"}


def test_planted_90_percent_drop_fails_and_publishes_nothing(tmp_path, corpora):
    texts = real_texts(corpora, "wiki_en", 400)
    words = sorted(len(t.split()) for t in texts)
    cut = words[int(0.93 * len(words))]  # min_words at the 93rd percentile: over 90% dropped
    cfg, lake, info = _lake(tmp_path, corpora, min_words=cut)  # the default gates
    with pytest.raises(GateFailed) as err:
        build_release(cfg, lake, info, "r1", "test")
    failed = [c for c in err.value.report["checks"] if c["outcome"] == "fail"]
    assert {(c["gate"], c["source"], c["rule"]) for c in failed} >= {("max_drop_rate", "wiki_en", "length:too_few_words")}
    [en] = [c for c in failed if c["gate"] == "max_drop_rate" and c["source"] == "wiki_en"]
    assert 0.9 < en["value"] < 0.95
    assert "rule length:too_few_words dropped" in str(err.value) and "--accept-gates" in str(err.value)
    _nothing_published(lake, None)
    record = json.loads(Path(err.value.record).read_text())
    assert record["gates"]["passed"] is False and record["sources"]["wiki_en"]["rows_in"] == 400
    # Accepting it deliberately publishes the same release, marked as accepted.
    m, created = build_release(cfg, lake, info, "r2", "test", accept_gates=True)
    assert created and m["version"] == err.value.version and m["gates"]["accepted"]
    assert latest_version(lake, "rel") == m["version"]


def test_all_quarantined_source_fails(tmp_path, corpora):
    cfg, lake, info = _lake(tmp_path, corpora, min_words=5)
    base, _ = build_release(cfg, lake, info, "r1", "test")
    # The length stage's annotations of wiki_es are gone: every wiki_es row is quarantined.
    Path(lake.annotation_path(info[0].key, lake.raw_shards("wiki_es")[0])).unlink()
    cfg.release.select = "length.keep and length.n_words >= 5"  # a new release, same data
    with pytest.raises(GateFailed) as err:
        build_release(cfg, lake, info, "r2", "test")
    gates = {(c["gate"], c["source"]) for c in err.value.report["checks"] if c["outcome"] == "fail"}
    assert gates == {("min_source_rows", "wiki_es"), ("max_quarantine_rate", "wiki_es")}
    _nothing_published(lake, base["version"])


def test_empty_source_fails_unless_optional(tmp_path, corpora):
    sources = {"wiki_en": [real_texts(corpora, "wiki_en", 300)], "empty": [[]]}
    cfg, lake, info = _lake(tmp_path, corpora, min_words=5, sources=sources)
    with pytest.raises(GateFailed, match="source empty released 0 rows"):
        build_release(cfg, lake, info, "r1", "test")
    m, created = build_release(cfg, lake, info, "r2", "test", optional_sources={"empty"})
    assert created and m["gates"]["passed"]


def test_empty_release_fails(tmp_path, corpora):
    cfg, lake, info = _lake(tmp_path, corpora, min_words=5, select="length.keep and length.n_words > 100000",
                            gates={"min_source_rows": None, "max_drop_rate": None})
    with pytest.raises(GateFailed, match="the release has 0 rows"):
        build_release(cfg, lake, info, "r1", "test")


def test_a_night_far_from_its_parent_fails(tmp_path, corpora):
    en = real_texts(corpora, "wiki_en", 1200)
    cfg, lake, info = _lake(tmp_path, corpora, min_words=40, sources={"wiki_en": [en[:300]]})
    parent, _ = build_release(cfg, lake, info, "night-1", "test")
    short = [" ".join(t.split()[:12]) for t in en[300:1200]]  # a broken extractor: every page cut short
    make_lake(tmp_path, {"wiki_en": [short]}, ingest_run="ing-night2", ingested_at="2026-01-02T00:00:00")
    cfg, lake, info = _lake(tmp_path, corpora, min_words=40, sources={"wiki_en": [en[:300]]},
                            gates={"max_drop_rate": None})
    with pytest.raises(GateFailed) as err:
        build_release(cfg, lake, info, "night-2", "test")
    [shift] = [c for c in err.value.report["checks"] if c["outcome"] == "fail"]
    assert shift["gate"] == "max_drop_shift" and shift["rule"] == "length:too_few_words" and shift["value"] > 0.25
    assert f"in the parent release {parent['version']}" in shift["message"]
    _nothing_published(lake, parent["version"])


def test_warning_when_a_rule_removes_most_of_a_source(tmp_path, corpora):
    texts = real_texts(corpora, "wiki_en", 400)
    words = sorted(len(t.split()) for t in texts)
    cfg, lake, info = _lake(tmp_path, corpora, min_words=words[int(0.7 * len(words))])  # ~70% dropped
    m, _ = build_release(cfg, lake, info, "r1", "test")
    [warn] = [c for c in m["gates"]["checks"] if c["outcome"] == "warn" and c["source"] == "wiki_en"]
    assert warn["source"] == "wiki_en" and warn["rule"] == "length:too_few_words" and 0.5 < warn["value"] < 0.95
    assert m["gates"]["passed"]
