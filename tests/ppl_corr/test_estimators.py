"""Perplexity-correlation estimators and projections (scorers.ppl_corr).

The reference is the PyPI package ``perplexity-correlations`` (test-only dependency);
tests comparing against it are skipped when it is not installed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scorers.ppl_corr import estimators as est
from scorers.ppl_corr import projections as proj

ref_est = pytest.importorskip("perplexity_correlations.estimation")
ref_proj = pytest.importorskip("perplexity_correlations.projection")

NAMES = ["spearmanr", "sign_cdf", "sign_sign", "sign", "product"]


def _data(seed: int, n: int, d: int, ties: bool):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d)) * 2.0
    y = rng.random(n)
    if ties:  # coarse values in some rows/columns and in half of y
        X[: n // 2, ::3] = np.round(X[: n // 2, ::3], 1)
        X[:, 1::7] = np.round(X[:, 1::7], 0)
        y[: n // 2] = np.round(y[: n // 2], 1)
    return X, y


def _ref(name, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(ref_est, name)(X, y)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed,n,ties", [(0, 5, False), (1, 37, True), (2, 90, True), (3, 130, True), (4, 64, False)])
def test_estimators_match_reference(name, seed, n, ties):
    X, y = _data(seed, n, 500, ties)
    ours = getattr(est, name)(X, y, kind="error")
    np.testing.assert_allclose(ours, _ref(name, X, y), rtol=0, atol=2e-15)


def test_estimate_dispatch_and_average_ties():
    X, y = _data(5, 40, 200, ties=False)
    for name in NAMES:
        np.testing.assert_allclose(est.estimate(X, y, kind="error", method=name), _ref(name, X, y), atol=1e-9)
    # without ties, mid-ranks equal ordinal ranks
    for name in ("spearmanr", "sign_cdf"):
        np.testing.assert_allclose(
            est.estimate(X, y, kind="error", method=name, ties="average"), _ref(name, X, y), atol=1e-9
        )
    # with ties: the package's formula applied to mid-ranks (scipy's "average")
    from scipy.stats import rankdata

    X, y = _data(6, 40, 50, ties=True)
    n = X.shape[0]
    rx, ry = rankdata(X, axis=0), rankdata(y)
    want = 1 - 6 * ((rx - ry[:, None]) ** 2).sum(axis=0) / (n * (n * n - 1))
    np.testing.assert_allclose(est.spearmanr(X, y, kind="error", ties="average"), want, atol=1e-12)
    w = rankdata(y)
    c = np.sign(y[None, :] - y[:, None]).sum(axis=0)  # #below - #above
    want_cdf = (c @ (rx / n)) * 2 / (n * (n - 1))
    np.testing.assert_allclose(est.sign_cdf(X, y, kind="error", ties="average"), want_cdf, atol=1e-12)
    assert w.shape == y.shape


def test_sign_sign_is_kendall_tau_a():
    from scipy.stats import kendalltau

    X, y = _data(7, 30, 40, ties=True)
    got = est.sign_sign(X, y, kind="error")
    n = X.shape[0]
    for j in range(X.shape[1]):
        # tau-a = (concordant - discordant) / (n choose 2), ties count zero
        c = sum(
            np.sign(X[k, j] - X[i, j]) * np.sign(y[k] - y[i]) for i in range(n) for k in range(i + 1, n)
        )
        assert got[j] == pytest.approx(c / (n * (n - 1) / 2), abs=1e-12)
    assert np.isfinite(kendalltau(X[:, 0], y).statistic)


# --- closed-form expectations on Gaussian data --------------------------------------


@pytest.mark.parametrize("rho", [-0.6, 0.0, 0.5, 0.9])
def test_gaussian_expectations(rho):
    """E[sign-sign] = (2/pi) arcsin(rho); E[Spearman] -> (6/pi) arcsin(rho/2).

    Each replicate draws fresh (x, y) for n models, so replicates are independent and
    the tolerance is 4 standard errors of the Monte Carlo mean. Spearman is tested
    against its exact finite-n mean 6/(pi (n+1)) [arcsin(rho) + (n-2) arcsin(rho/2)],
    which tends to (6/pi) arcsin(rho/2). X = exp(x) and y = a logistic-like map of the
    Gaussian keep bits-per-byte positive and error in [0, 1] without changing ranks.
    """
    rng = np.random.default_rng(12)
    n, reps = 50, 400
    ss, sr = [], []
    for _ in range(reps):
        yv = rng.standard_normal(n)
        x = rho * yv + np.sqrt(1 - rho**2) * rng.standard_normal(n)
        X, y = np.exp(x)[:, None], np.arctan(yv) / np.pi + 0.5
        ss.append(est.sign_sign(X, y, kind="error")[0])
        sr.append(est.spearmanr(X, y, kind="error")[0])
    ss, sr = np.array(ss), np.array(sr)
    exp_sr = 6 / (np.pi * (n + 1)) * (np.arcsin(rho) + (n - 2) * np.arcsin(rho / 2))
    assert abs(ss.mean() - 2 / np.pi * np.arcsin(rho)) < 4 * ss.std() / np.sqrt(reps) + 1e-3
    assert abs(sr.mean() - exp_sr) < 4 * sr.std() / np.sqrt(reps) + 1e-3
    assert abs(exp_sr - 6 / np.pi * np.arcsin(rho / 2)) < 0.02


# --- planted recovery ---------------------------------------------------------------


def _planted(seed=0, n=400, d=1000, k=10):
    rng = np.random.default_rng(seed)
    skill = rng.standard_normal(n)  # latent model quality (higher = better model)
    X = 1.0 + 0.1 * rng.standard_normal((n, d))
    informative = rng.choice(d, size=k, replace=False)
    # better models have lower loss on informative domains
    X[:, informative] = 1.0 - 0.1 * (0.7 * skill[:, None] + 0.7 * rng.standard_normal((n, k)))
    error = 1 / (1 + np.exp(skill + 0.3 * rng.standard_normal(n)))  # better model, lower error
    return X, error, set(informative.tolist())


@pytest.mark.parametrize("name", ["spearmanr", "sign_cdf", "sign_sign", "sign", "product"])
def test_planted_recovery(name):
    X, error, informative = _planted()
    scores = est.estimate(X - X.min() + 0.01, error, kind="error", method=name)
    caps = np.full(X.shape[1], 0.1)  # top 10 domains exactly fill the simplex
    w = proj.linear(scores, caps, ties="stable")
    chosen = set(np.argsort(-w, kind="stable")[:10].tolist())  # top-10 selected
    assert w[list(chosen)].sum() == pytest.approx(1.0, abs=1e-9)
    assert len(chosen & informative) >= 9


# --- the sign guard -----------------------------------------------------------------


def _top10(w):
    return set(np.argsort(-w, kind="stable")[:10].tolist())


def test_sign_guard_accuracy_vs_error():
    X, error, informative = _planted(seed=1)
    accuracy = 1 - error
    caps = np.full(X.shape[1], 0.1)
    for name in NAMES:
        a = est.estimate(X, accuracy, kind="accuracy", method=name)
        e = est.estimate(X, error, kind="error", method=name)
        np.testing.assert_allclose(a, e, atol=1e-12)
        sel_a = _top10(proj.linear(a, caps, ties="stable"))
        sel_e = _top10(proj.linear(e, caps, ties="stable"))
        assert sel_a == sel_e
        # the mistake the guard prevents: accuracy treated as error flips the ranking
        wrong = est.estimate(X, accuracy, kind="error", method=name)
        sel_wrong = _top10(proj.linear(wrong, caps, ties="stable"))
        assert len(sel_wrong & informative) <= 1
        if name != "product":  # rank statistics are exactly antisymmetric in y
            np.testing.assert_allclose(wrong, -e, atol=1e-12)


def test_kind_is_required_and_validated():
    X, y = _data(0, 10, 5, ties=False)
    with pytest.raises(TypeError):
        est.spearmanr(X, y)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        est.spearmanr(X, y, kind="acc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        est.spearmanr(X, y * 100, kind="accuracy")  # percentages
    with pytest.raises(ValueError):
        est.spearmanr(-X, y, kind="error")  # log-likelihoods, not bits-per-byte
    with pytest.raises(ValueError):
        est.spearmanr(X[:5], y, kind="error")


# --- projections --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_projections_match_reference(seed):
    rng = np.random.default_rng(seed)
    d = 2000
    e = rng.standard_normal(d)
    caps = rng.random(d) * (0.002 if seed % 2 else 0.3) + 1e-6
    ours_lin = proj.linear(e, caps)
    theirs_lin = ref_proj.linear(e, caps)
    # the package builds the linear projection in float32: agree to float32 precision
    assert theirs_lin.dtype == np.float32
    np.testing.assert_allclose(ours_lin, theirs_lin, rtol=0, atol=2e-6)
    assert np.array_equal(ours_lin > 0, theirs_lin > 0)
    np.testing.assert_allclose(proj.l2(e, caps), ref_proj.l2(e, caps), rtol=0, atol=1e-9)
    # small-scale estimates (like correlations) too
    e2 = e * 1e-3
    np.testing.assert_allclose(proj.l2(e2, caps), ref_proj.l2(e2, caps), rtol=0, atol=1e-9)


def test_linear_projection_ties_reference_order():
    # discrete estimates (Spearman on few models) are full of ties
    X, y = _data(3, 12, 3000, ties=True)
    e = est.spearmanr(X, y, kind="error")
    assert np.unique(e).size < e.size
    caps = np.full(e.size, 0.013)
    np.testing.assert_allclose(proj.linear(e, caps), ref_proj.linear(e, caps), atol=2e-6)
    w = proj.linear(e, caps, ties="stable")
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("method", ["linear", "l2"])
@pytest.mark.parametrize("seed", range(4))
def test_projection_properties(method, seed):
    rng = np.random.default_rng(seed)
    d = 500
    e = rng.standard_normal(d) * (1 if seed % 2 else 1e-2)
    tokens = rng.integers(0, 10_000, size=d).astype(float)
    caps = proj.caps_from_tokens(tokens, ratio=0.2)
    w = proj.project(e, caps, method=method)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(w >= 0) and np.all(w <= caps + 1e-15)
    if method == "linear":
        order = np.argsort(-e, kind="stable")
        ws = w[order]
        k = np.flatnonzero(ws < caps[order])[0]  # first domain not filled to its cap
        assert np.all(ws[:k] == caps[order][:k])  # best-ranked are filled first
        assert np.all(ws[k + 1 :] == 0)
    else:
        # KKT: w = clip(e + t, 0, caps) for one common offset t
        free = (w > 0) & (w < caps)
        t = (w - e)[free]
        assert np.ptp(t) < 1e-9
        assert np.allclose(w, np.clip(e + t.mean(), 0, caps), atol=1e-9)


def test_caps_from_tokens():
    caps = proj.caps_from_tokens(np.array([100.0, 300.0, 600.0]), ratio=0.5)
    np.testing.assert_allclose(caps, [0.2, 0.6, 1.2])
    assert caps.sum() == pytest.approx(2.0)  # 1 / ratio
    # a selected mixture never asks a domain for more tokens than it holds
    w = proj.linear(np.array([3.0, 2.0, 1.0]), caps)
    selected_tokens = w * 0.5 * 1000
    assert np.all(selected_tokens <= np.array([100, 300, 600]) + 1e-9)
    with pytest.raises(ValueError):
        proj.caps_from_tokens(np.array([1.0, 2.0]), ratio=0.0)
    with pytest.raises(ValueError):
        proj.linear(np.zeros(3), np.array([0.1, 0.1, 0.1]))  # infeasible
