"""``top_fraction``'s threshold against a brute-force definition, and its per-row verdicts."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from engines.stage import StageContext
from scorers.top_fraction import TopFraction, threshold_for


def brute_threshold(scores: np.ndarray, weights: np.ndarray, fraction: float) -> float:
    """The highest score s whose documents scoring >= s carry at least ``fraction`` of the weight."""
    ok = ~np.isnan(scores)
    s, w = scores[ok], weights[ok]
    total = w.sum()
    return max(v for v in set(s.tolist()) if w[s >= v].sum() >= fraction * total - 1e-9 * total)


@pytest.mark.parametrize("seed", range(30))
def test_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    scores = rng.integers(0, 12, n).astype(float)  # many ties
    scores[rng.random(n) < 0.1] = np.nan
    if np.isnan(scores).all():
        scores[0] = 1.0
    weights = rng.integers(1, 50, n).astype(float)
    fraction = float(rng.uniform(0.01, 1.0))
    assert threshold_for(scores, weights, fraction) == brute_threshold(scores, weights, fraction)
    # Lower-is-better is the same on negated scores.
    assert -threshold_for(-scores, weights, fraction, higher_is_better=False) == brute_threshold(scores, weights,
                                                                                                   fraction)


def test_ranks_only_named_sources_and_drops_unscored(tmp_path):
    stage = TopFraction({"fraction": 0.5, "rank_sources": ["web.rewire"]})
    batch = pl.DataFrame({"score": [0.9, 0.1, 0.5, None, 0.2], "text": ["a b"] * 5,
                          "source": ["web.rewire", "web.rewire", "web.rewire", "web.rewire", "web"]})
    metrics = stage.fit(iter([batch]), str(tmp_path))
    assert metrics["threshold"] == 0.5 and metrics["ranked"] == 3 and metrics["unscored"] == 1
    stage.setup(StageContext(artifact_dir=str(tmp_path)))
    out = stage.transform(batch)
    assert out.get_column("keep").to_list() == [True, False, True, False, True]
    assert out.get_column("reason").to_list() == [None, "below_top_fraction", None, "no_score", None]
