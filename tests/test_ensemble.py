"""Score ensembles: max and mean of buckets, nulls ignored, optional threshold."""
from __future__ import annotations

import polars as pl

from scorers.ensemble import ScoreEnsemble


def test_max_and_mean_of_buckets():
    batch = pl.DataFrame({"id": ["a", "b", "c", "d"], "x": [3, 10, None, None], "y": [7, 2, 5, None]})
    mx = ScoreEnsemble({"columns": ["x", "y"], "combine": "max", "min_bucket": 6}).transform(batch)
    assert mx["bucket"].to_list() == [7.0, 10.0, 5.0, None]
    assert mx["keep"].to_list() == [True, True, False, False]
    assert mx["reason"].to_list() == [None, None, "ensemble_below_min_bucket", "ensemble_below_min_bucket"]
    mean = ScoreEnsemble({"columns": ["x", "y"], "combine": "mean"}).transform(batch)
    assert mean["bucket"].to_list() == [5.0, 6.0, 5.0, None] and mean.columns == ["bucket"]
    assert ScoreEnsemble({"columns": ["x", "y"]}).needs == ("x", "y")
