"""fastText quality classifiers, trained for real on real text (and word-salad negatives)."""
from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from engines.executor import LocalExecutor, ShardTask
from engines.stage import StageContext
from schemas.config import ExecutorConfig
from scorers.fasttext_quality import FastTextDistill, FastTextQuality, auc
from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake


def _salad(texts: list[str], seed: int = 0) -> list[str]:
    """Low-quality look-alikes: the same words, shuffled (a common negative for quality filters)."""
    rng = random.Random(seed)
    out = []
    for t in texts:
        w = t.split()
        rng.shuffle(w)
        out.append(" ".join(w))
    return out


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(300), 2)  # ties on purpose
    y = rng.random(300) < 0.4
    pos, neg = s[y], s[~y]
    ref = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(s, y) == pytest.approx(ref, abs=1e-12)


def _run(tmp_path, stage, sources, inputs=None):
    lake = Lake(str(tmp_path))
    key = stage.key("q")
    tasks = [ShardTask(s, p, lake.annotation_path(key, p), inputs(p) if inputs else ()) for s in sources
             for p in lake.raw_shards(s)]
    art = tmp_path / "art"
    art.mkdir()
    with LocalExecutor(ExecutorConfig(workers=1, batch_rows=256), show_progress=False) as ex:
        metrics = ex.fit(stage, tasks, str(art))
        ex.run_stage("q", stage, tasks, StageContext(artifact_dir=str(art)))
    return metrics, [pq.read_table(t.out_path) for t in tasks], art


def test_quality_classifier_separates_real_text_from_word_salad(tmp_path, corpora):
    good = real_texts(corpora, "wiki_en", 1200)
    bad = _salad(real_texts(corpora, "wiki_en", 1200, offset=2000))
    make_lake(tmp_path, {"good": [good[:600], good[600:]], "salad": [bad]})
    stage = FastTextQuality({"positive": ["good"], "negative": ["salad"], "buckets": 10, "select_top": 0.5,
                             "epoch": 25, "lr": 0.5})
    metrics, tables, art = _run(tmp_path, stage, ["good", "salad"])
    assert metrics["auc"] > 0.95 and metrics["precision"] > 0.9 and metrics["recall"] > 0.9
    assert metrics["holdout_pos"] > 50 and metrics["holdout_neg"] > 50
    good_scores = np.concatenate([t.column("score").to_numpy() for t in tables[:2]])
    bad_scores = tables[2].column("score").to_numpy()
    assert good_scores.mean() > 0.8 > 0.2 > bad_scores.mean()
    # Byte-weighted buckets: each of the 10 holds about a tenth of the bytes.
    allt = pa.concat_tables(tables)
    texts = good + bad
    nbytes = np.array([len(t.encode()) for t in texts], dtype=float)
    b = allt.column("bucket").to_numpy()
    share = np.array([nbytes[b == k].sum() for k in range(10)]) / nbytes.sum()
    assert np.all(np.abs(share - 0.1) < 0.06), share
    # select_top 0.5 of documents keeps about half.
    assert 0.4 < np.mean(allt.column("keep").to_numpy(zero_copy_only=False)) < 0.6
    cal = json.loads((art / "calibration.json").read_text())
    assert len(cal["bucket_edges"]) == 9 and cal["bucket_edges"] == sorted(cal["bucket_edges"])


def test_same_seed_same_model(tmp_path, corpora):
    good = real_texts(corpora, "wiki_fr", 400)
    bad = _salad(real_texts(corpora, "wiki_fr", 400, offset=1000))
    scores = []
    for sub in ("a", "b"):
        make_lake(tmp_path / sub, {"good": [good], "salad": [bad]})
        # quantize_cutoff 10,000: still quantised, ~5 s instead of ~22 s of product quantisation per fit.
        _, tables, _ = _run(tmp_path / sub, FastTextQuality({"positive": ["good"], "negative": ["salad"],
                                                             "quantize_cutoff": 10_000}), ["good", "salad"])
        scores.append(np.concatenate([t.column("score").to_numpy() for t in tables]))
    assert np.array_equal(scores[0], scores[1])


def test_stored_quantised_model_is_fasttexts_own_quantisation_of_the_full_model(tmp_path, corpora):
    """The stage quantises the trained model in place (no 531 MB copy written and loaded back):
    the stored file is byte for byte what fastText makes from the full model saved and loaded
    again, and the fit records how far its scores are from the full model's."""
    import fasttext

    good = real_texts(corpora, "wiki_fr", 400)
    bad = _salad(real_texts(corpora, "wiki_fr", 400, offset=1000))
    runs = {}
    for store in ("raw", "quantized"):
        make_lake(tmp_path / store, {"good": [good], "salad": [bad]})
        params = {"positive": ["good"], "negative": ["salad"], "store": store, "quantize_cutoff": 10_000}
        runs[store] = _run(tmp_path / store, FastTextQuality(params), ["good", "salad"])
    full = fasttext.load_model(str(runs["raw"][2] / "model.bin"))  # the same seeded model, stored whole
    full.quantize(cutoff=10_000, retrain=False)
    full.save_model(str(tmp_path / "reference.ftz"))
    assert (runs["quantized"][2] / "model.ftz").read_bytes() == (tmp_path / "reference.ftz").read_bytes()
    assert "agreement_with_full_model" not in runs["raw"][0]["store"]
    # The recorded agreement is the one between the two stores' scores: the calibration sample
    # (up to 20,000 documents) holds all 800 here, scored by the full model before quantising.
    raw = np.concatenate([t.column("score").to_numpy() for t in runs["raw"][1]])
    quantised = np.concatenate([t.column("score").to_numpy() for t in runs["quantized"][1]])
    agree = runs["quantized"][0]["store"]["agreement_with_full_model"]
    assert agree["spearman"] == pytest.approx(spearmanr(raw, quantised).statistic, abs=1e-4)
    assert agree["mean_abs_diff"] == pytest.approx(np.abs(raw - quantised).mean(), abs=1e-5) and agree["mean_abs_diff"] > 0
    assert agree["max_abs_diff"] == pytest.approx(np.abs(raw - quantised).max(), abs=1e-4)


def test_distillation_from_a_grade_column(tmp_path, corpora):
    good = real_texts(corpora, "wiki_es", 500)
    bad = _salad(real_texts(corpora, "wiki_es", 500, offset=1000))
    texts = good + bad
    rng = random.Random(1)
    order = list(range(len(texts)))
    rng.shuffle(order)
    mixed = [texts[i] for i in order]
    make_lake(tmp_path, {"pool": [mixed]})
    # A grade for a 40% sample, as an LLM grader would leave it (others null): here the planted truth.
    lake = Lake(str(tmp_path))
    raw = lake.raw_shards("pool")[0]
    grade_path = tmp_path / "grades.parquet"
    grades = [(1.0 if i < 500 else 0.0) if k % 5 < 2 else None for k, i in enumerate(order)]
    ids = pq.read_table(raw, columns=["id"]).column("id")
    pq.write_table(pa.table({"id": ids, "score": pa.array(grades, pa.float64())}), grade_path)
    stage = FastTextDistill({"label_column": "score", "label_threshold": 0.5, "epoch": 25, "lr": 0.5,
                             "quantize_cutoff": 10_000})  # still quantised: ~5 s, not ~22 s
    metrics, [table], _ = _run(tmp_path, stage, ["pool"], inputs=lambda p: (("score", str(grade_path), "score"),))
    assert metrics["train_pos"] + metrics["train_neg"] + metrics["holdout_pos"] + metrics["holdout_neg"] == 400
    assert metrics["auc"] > 0.9  # agreement with the grades on the held-out part
    s = table.column("score").to_numpy()
    truth = np.array([i < 500 for i in order])
    assert auc(s[np.array(grades) == None], truth[np.array(grades) == None]) > 0.9  # noqa: E711 - ungraded docs too
