"""mixture.group_by: a release planned over an annotation column's values (clusters as domains)."""
from __future__ import annotations

import polars as pl
import pytest

from planning.release_plan import make_planner, regroup


def _frames():
    a = pl.DataFrame({"_file": [0] * 4, "_row": [0, 1, 2, 3], "id": ["a0", "a1", "a2", "a3"],
                      "n_tokens": [10, 10, 10, 10], "sem.cluster": [0, 0, 1, None]})
    b = pl.DataFrame({"_file": [1] * 3, "_row": [0, 1, 2], "id": ["b0", "b1", "b2"],
                      "n_tokens": [100, 100, 100], "sem.cluster": [1, 1, 2]})
    return {"a": a, "b": b}


def test_regroup_names_groups_and_keeps_sources():
    g = regroup(_frames(), "sem.cluster")
    assert list(g) == ["sem.cluster=0", "sem.cluster=1", "sem.cluster=2", "sem.cluster=null"]
    assert g["sem.cluster=1"].get_column("_source").to_list() == ["a", "b", "b"]
    assert sum(f.height for f in g.values()) == 7


def test_grouped_plan_weights_groups_and_restores_sources():
    plan = make_planner({"method": "fixed", "weights": {"sem.cluster=0": 0.5, "sem.cluster=1": 0.5},
                         "group_by": "sem.cluster"}, None, None, seed=0)
    picks, extras = plan(_frames())
    assert extras["group_by"] == "sem.cluster"
    assert set(extras["mixture"]["weights"]) == {"sem.cluster=0", "sem.cluster=1", "sem.cluster=2",
                                                 "sem.cluster=null"}
    assert set(picks.get_column("source").unique().to_list()) <= {"a", "b"}
    assert set(picks.get_column("group").unique().to_list()) == {"sem.cluster=0", "sem.cluster=1"}
    tokens = picks.group_by("group").agg(pl.col("n_tokens").sum())
    got = dict(tokens.iter_rows())
    # equal weights: each group gets half of the 340 tokens, up to one document's tokens (with repeats)
    assert abs(got["sem.cluster=0"] - 170) <= 10 and abs(got["sem.cluster=1"] - 170) <= 100
    # the same plan is drawn again for the same seed
    again, _ = plan(_frames())
    assert again.equals(picks)


def test_group_by_must_name_a_stage_column():
    with pytest.raises(ValueError):
        make_planner({"group_by": "cluster"}, None, None, seed=0)
