"""Orderings: exact structural properties and determinism under a seed."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from planning.curriculum import (
    CurriculumConfig,
    order_ascending,
    order_descending,
    order_folding,
    order_frame,
    order_pacing,
    order_random,
    order_release,
    order_warmup,
    pacing,
    pacing_blocks,
)


@pytest.fixture()
def df() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    d = rng.random(1000)
    d[::97] = np.nan
    return pl.DataFrame({"d": pl.Series(d).fill_nan(None), "copy_of": rng.integers(0, 300, 1000)})


def _is_perm(p: np.ndarray, n: int) -> bool:
    return p.dtype == np.int64 and len(p) == n and (np.sort(p) == np.arange(n)).all()


def test_random_is_seeded_permutation(df) -> None:
    a, b, c = order_random(df, 1), order_random(df, 1), order_random(df, 2)
    assert _is_perm(a, df.height) and (a == b).all() and not (a == c).all()


def test_ascending_descending_nulls_last_ties_shuffled(df) -> None:
    v = df.get_column("d").to_numpy()
    up = order_ascending(df, "d", 0)
    down = order_descending(df, "d", 0)
    assert _is_perm(up, df.height) and _is_perm(down, df.height)
    nn = df.get_column("d").null_count()
    assert np.all(np.diff(v[up][:-nn]) >= 0) and np.isnan(v[up][-nn:]).all()
    assert np.all(np.diff(v[down][:-nn]) <= 0) and np.isnan(v[down][-nn:]).all()
    ties = pl.DataFrame({"d": [1.0] * 50})
    t0, t1 = order_ascending(ties, "d", 0), order_ascending(ties, "d", 1)
    assert not (t0 == np.arange(50)).all() and not (t0 == t1).all()


def test_folding_structure(df) -> None:
    v = df.get_column("d").fill_null(2.0).to_numpy()  # nulls count as the hardest
    for folds in (1, 3, 4):
        p = order_folding(df, "d", folds, seed=0)
        assert _is_perm(p, df.height)
        sizes = [len(range(j, df.height, folds)) for j in range(folds)]
        s = order_ascending(df, "d", 0)
        start = 0
        for j, size in enumerate(sizes):
            block = p[start:start + size]
            assert (block == s[j::folds]).all()  # fold j is every folds-th row of the sorted order
            assert np.all(np.diff(v[block]) >= 0)  # each fold climbs from easy to hard
            start += size
    p3 = order_folding(df, "d", 3, seed=0)
    # the difficulty resets at each fold boundary: exactly folds-1 descents
    assert int((np.diff(v[p3]) < 0).sum()) == 2


@pytest.mark.parametrize("schedule", ["linear", "quadratic", "inverse_quadratic", "root"])
def test_pacing_only_uses_released_rows(df, schedule) -> None:
    n = df.height
    p = order_pacing(df, "d", schedule, start=0.2, steps=20, seed=3)
    assert _is_perm(p, n) and (p == order_pacing(df, "d", schedule, start=0.2, steps=20, seed=3)).all()
    rank = np.empty(n, dtype=np.int64)
    rank[order_ascending(df, "d", 3)] = np.arange(n)
    ends, released = pacing_blocks(n, schedule, 0.2, 20)
    start = 0
    for end, rel in zip(ends, released):
        assert rank[p[start:end]].max() < rel  # nothing harder than the released share
        start = end
    assert released[0] == pytest.approx(0.2 * n, abs=1)
    t = np.linspace(0, 1, 11)
    g = pacing(t, schedule, 0.2)
    assert g[0] == pytest.approx(0.2) and g[-1] == pytest.approx(1.0) and np.all(np.diff(g) >= 0)


def test_pacing_schedule_shapes() -> None:
    assert pacing(0.5, "linear", 0.0) == pytest.approx(0.5)
    assert pacing(0.5, "quadratic", 0.0) == pytest.approx(0.25)
    assert pacing(0.5, "inverse_quadratic", 0.0) == pytest.approx(0.75)
    assert pacing(0.25, "root", 0.0) == pytest.approx(0.5)


def test_warmup_then_random(df) -> None:
    p = order_warmup(df, "d", 0.1, seed=4)
    s = order_ascending(df, "d", 4)
    assert _is_perm(p, df.height)
    assert (p[:100] == s[:100]).all()
    assert set(p[100:]) == set(s[100:]) and not (p[100:] == s[100:]).all()


def test_order_release_phases_and_config() -> None:
    frame = pl.DataFrame({"d": np.arange(20, 0, -1, dtype=float), "phase": [0] * 15 + [1] * 5})
    perm, starts = order_release(frame, {"kind": "ascending", "column": "d"}, seed=0)
    assert starts == [0, 15]
    assert (frame["phase"].to_numpy()[perm] == [0] * 15 + [1] * 5).all()
    assert np.all(np.diff(frame["d"].to_numpy()[perm[:15]]) > 0)
    perm2, _ = order_release(frame, {"kind": "ascending", "column": "d"}, seed=0,
                             anneal={"kind": "descending", "column": "d"})
    assert np.all(np.diff(frame["d"].to_numpy()[perm2[15:]]) < 0)
    with pytest.raises(ValueError, match="needs a difficulty column"):
        CurriculumConfig(kind="folding")
    assert (order_frame(frame, CurriculumConfig(kind="random"), 9) == order_random(frame, 9)).all()
