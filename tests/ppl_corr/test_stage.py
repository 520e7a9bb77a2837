"""The perplexity_correlation stage end to end on a small lake of real text, with planted inputs."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from engines.executor import LocalExecutor, ShardTask
from engines.stage import StageContext
from schemas.config import ExecutorConfig
from scorers.ppl_corr.stage import PerplexityCorrelation
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake


def _files(tmp_path, informative, domains, n_models=60, seed=0):
    rng = np.random.default_rng(seed)
    skill = rng.normal(size=n_models)
    rows = ["model,domain,bpb"]
    for i in range(n_models):
        for d in domains:
            x = 1.2 - (0.2 * skill[i] if d in informative else 0) + rng.normal(scale=0.05)
            rows.append(f"m{i},{d},{x:.5f}")
    (tmp_path / "bpb.csv").write_text("\n".join(rows) + "\n")
    acc = ["model,bench_acc"] + [f"m{i},{float(np.clip(0.6 + 0.1 * skill[i], 0.01, 0.99)):.5f}" for i in range(n_models)]
    (tmp_path / "scores.csv").write_text("\n".join(acc) + "\n")


def _run(tmp_path, params):
    lake = Lake(str(tmp_path))
    stage = PerplexityCorrelation(params)
    stage.base_dir = str(tmp_path)
    tasks = [ShardTask(s, p, lake.annotation_path(stage.key("pc"), p)) for s in ("good", "other", "third")
             for p in lake.raw_shards(s)]
    art = tmp_path / "art"
    art.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1), show_progress=False) as ex:
        metrics = ex.fit(stage, tasks, str(art))
        ex.run_stage("pc", stage, tasks, StageContext(artifact_dir=str(art)))
    return metrics, {t.source: pq.read_table(t.out_path) for t in tasks}, json.loads((art / "selection.json").read_text())


def test_selects_the_planted_domain_and_keeps_the_ratio(tmp_path, corpora):
    # Without URLs the group is the source: "good" is the informative one.
    make_lake(tmp_path, {"good": [real_texts(corpora, "wiki_en", 300)], "other": [real_texts(corpora, "wiki_fr", 300)],
                         "third": [real_texts(corpora, "wiki_es", 300)]})
    _files(tmp_path, {"good"}, ["good", "other", "third"])
    params = {"bpb": "bpb.csv", "scores": "scores.csv", "targets": ["bench_acc"], "kind": "accuracy",
              "group_by": "source", "ratio": 0.25, "quantize_cutoff": 10_000}  # ~5 s to quantise, not ~22 s
    metrics, out, sel = _run(tmp_path, params)
    assert metrics["selected_domains"] == ["good"]
    assert sel["domains"]["good"]["weight"] == pytest.approx(1.0)
    kept = {s: np.asarray(t.column("keep").to_pylist()) for s, t in out.items()}
    words = {s: np.array([len(x.split()) for x in real_texts(corpora, n, 300)]) for s, n in
             (("good", "wiki_en"), ("other", "wiki_fr"), ("third", "wiki_es"))}
    kept_tokens = {s: words[s][kept[s]].sum() for s in words}
    share = sum(kept_tokens.values()) / sum(w.sum() for w in words.values())
    assert 0.15 < share < 0.35  # about the requested ratio of tokens
    assert kept_tokens["good"] / sum(kept_tokens.values()) > 0.9  # and they come from the selected domain


def test_kind_is_required(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        PerplexityCorrelation({"bpb": "b.csv", "scores": "s.csv", "targets": ["x"]})


def test_selection_drives_the_release(tmp_path, corpora):
    """``pc.keep`` in ``release.select``: the release holds exactly the selected documents, and
    the drops are attributed to the stage."""
    from pathlib import Path

    from schemas.config import PipelineConfig
    from warehouse.release import StageInfo, build_release
    texts = {"good": real_texts(corpora, "wiki_en", 200), "other": real_texts(corpora, "wiki_fr", 200),
             "third": real_texts(corpora, "wiki_es", 200)}
    make_lake(tmp_path, {s: [t] for s, t in texts.items()})
    _files(tmp_path, {"good"}, list(texts))
    params = {"bpb": "bpb.csv", "scores": "scores.csv", "targets": ["bench_acc"], "kind": "accuracy",
              "group_by": "source", "ratio": 0.25, "quantize_cutoff": 10_000}  # ~5 s to quantise, not ~22 s
    _, out, _ = _run(tmp_path, params)
    cfg = PipelineConfig.model_validate({
        "name": "t", "lake": str(tmp_path),
        "sources": [{"name": s, "format": "parquet", "paths": ["x"]} for s in texts],
        "release": {"name": "rel", "select": "pc.keep", "order": "ingest", "shard_rows": 100, "seed": 1,
                    # choosing domains drops whole sources by design: those gates do not apply
                    "gates": {"min_source_rows": None, "max_drop_rate": None}}})
    lake = Lake(str(tmp_path))
    stage = PerplexityCorrelation(params)
    info = [StageInfo("pc", stage.key("pc"), list(stage.writes()), None)]
    manifest, _ = build_release(cfg, lake, info, "run-1", "test")
    d = Path(lake.release_dir("rel", manifest["version"]))
    released = sorted(r["text"] for s in manifest["shards"] for r in pq.read_table(d / s["file"]).to_pylist())
    wanted = sorted(t for s in texts for t, k in zip(texts[s], out[s].column("keep").to_pylist()) if k and t.strip())
    assert released == wanted and 0 < len(wanted) < 600
    dropped = sum(x["rows"] for x in manifest["drop_reasons"] if (x["stage"], x["reason"]) == ("pc", "ppl_corr_not_selected"))
    assert dropped == 600 - len(wanted) - sum(1 for s in texts for t in texts[s] if not t.strip())
