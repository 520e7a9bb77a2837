"""The compiled estimator kernels (scorers.ppl_corr.kernels) against the reference package and
the pure-NumPy path: ties, float32 collisions, odd shapes, threads, the generic C path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scorers.ppl_corr import estimators as est
from scorers.ppl_corr import kernels

ref_est = pytest.importorskip("perplexity_correlations.estimation")

RANK = ["spearmanr", "sign_cdf", "sign_sign"]
ALL = RANK + ["sign", "product"]
HAS_LIB = kernels.library() is not None


@pytest.fixture(params=["native", "numpy"])
def backend(request, monkeypatch):
    if request.param == "native":
        if not HAS_LIB:
            pytest.skip("no C compiler")
        monkeypatch.setenv("CURATE_PPL_NATIVE", "1")
        assert kernels.active()
    else:
        monkeypatch.setenv("CURATE_PPL_NATIVE", "0")
        assert not kernels.active()
    return request.param


def _ref(name, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(ref_est, name)(X, y)


def _collide(rng, n, d):
    """Random bits-per-byte with hard columns: planted ties, float32 collisions (values that
    differ only beyond float32 precision, in both orders), huge and denormal values."""
    X = rng.random((n, d)) * 2.0
    u = np.float64(np.float32(0.75))
    for j in range(0, d, 5):  # float32 collisions: u + tiny steps, shuffled over models
        k = min(n, 2 + j % 7)
        rows = rng.choice(n, size=k, replace=False)
        X[rows, j] = u + np.arange(k) * 2.0**-40 * (1 if j % 2 else -1)
    for j in range(1, d, 7):  # genuine float64 ties
        rows = rng.choice(n, size=min(n, 3), replace=False)
        X[rows, j] = X[rows[0], j]
    for j in range(2, d, 11):  # coarse values: many ties in one column
        X[:, j] = np.round(X[:, j], 1)
    if d > 3:
        X[: min(n, 2), 3] = [1e300, 3e300][: min(n, 2)]  # beyond float32: both become inf
        X[-1, 3] = 5e-320  # float64 denormal, 0 in float32
        X[0, d - 1] = 0.0
        X[-1, d - 1] = -0.0  # equal to 0.0: a tie in both precisions
    return X


CASES = [  # (seed, N models, D domains)
    (0, 2, 1),
    (1, 2, 70),
    (2, 3, 5),
    (3, 17, 64),
    (4, 37, 129),
    (5, 90, 200),
    (6, 130, 67),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed,n,d", CASES)
@pytest.mark.parametrize("y_ties", [False, True])
def test_matches_reference_on_hard_columns(backend, name, seed, n, d, y_ties):
    rng = np.random.default_rng(seed)
    X = _collide(rng, n, d)
    y = rng.random(n)
    if y_ties:
        y[: max(2, n // 2)] = np.round(y[: max(2, n // 2)], 1)
    got = getattr(est, name)(X, y, kind="error")
    want = _ref(name, X, y)
    # relative tolerance only matters for sign/product on the 1e300 column
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=2e-15)
    if name == "spearmanr":  # same integer sum and the package's final expression
        assert np.array_equal(got, want)


@pytest.mark.parametrize("name", RANK)
def test_native_equals_numpy_bitwise(name, monkeypatch):
    if not HAS_LIB:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(11)
    X = _collide(rng, 45, 3000)
    y = rng.random(45)
    y[:10] = np.round(y[:10], 1)
    ties_modes = ["reference", "average"] if name != "sign_sign" else [None]
    for ties in ties_modes:
        kw = {"kind": "error"} | ({} if ties is None else {"ties": ties})
        monkeypatch.setenv("CURATE_PPL_NATIVE", "0")
        slow = getattr(est, name)(X, y, **kw)
        monkeypatch.setenv("CURATE_PPL_NATIVE", "1")
        for threads in ("1", "2", "3"):
            monkeypatch.setenv("CURATE_PPL_THREADS", threads)
            assert np.array_equal(getattr(est, name)(X, y, **kw), slow), (ties, threads)


@pytest.mark.parametrize("name", ["spearmanr", "sign_cdf"])
def test_average_ties_match_midrank_formula(backend, name):
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    n = 33
    X = _collide(rng, n, 150)
    y = rng.random(n)
    y[:12] = np.round(y[:12], 1)
    rx = rankdata(X, axis=0)
    if name == "spearmanr":
        ry = rankdata(y)
        want = 1 - 6 * ((rx - ry[:, None]) ** 2).sum(axis=0) / (n * (n * n - 1))
    else:
        c = np.sign(y[None, :] - y[:, None]).sum(axis=0)
        want = (c @ (rx / n)) * 2 / (n * (n - 1))
    got = getattr(est, name)(X, y, kind="error", ties="average")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def test_strided_and_fortran_inputs(backend):
    rng = np.random.default_rng(4)
    big = rng.random((40, 400))
    y = rng.random(40)
    for X in (big[:, 7:300], big[:, ::3], np.asfortranarray(big), big[::2, :][:20]):
        yy = y[: X.shape[0]]
        for name in RANK:
            got = getattr(est, name)(X, yy, kind="error")
            np.testing.assert_allclose(got, _ref(name, np.ascontiguousarray(X), yy), rtol=0, atol=2e-15)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e-3])
def test_invalid_values_raise(backend, bad):
    rng = np.random.default_rng(5)
    X = rng.random((20, 300))
    X[7, 250] = bad
    y = rng.random(20)
    for name in ALL:
        with pytest.raises(ValueError):
            getattr(est, name)(X, y, kind="error")


@pytest.mark.skipif(not HAS_LIB, reason="no C compiler")
def test_generic_c_path_equals_simd_path():
    """The portable vector-extension code (used without AVX-512) gives the same sums and flags."""
    generic = kernels._load(("-DPC_GENERIC",))
    rng = np.random.default_rng(6)
    for n, d in [(2, 1), (37, 129), (90, 300)]:
        X = _collide(rng, n, d)
        w = rng.integers(-n, n, size=n)
        rows = rng.permutation(n)
        lim = np.sort(rng.integers(0, n, size=n))
        lim = np.minimum(lim, np.arange(n))
        for args in [dict(lim=np.arange(n), w=w), dict(lim=lim, rows=rows)]:
            a = kernels.pairs_f32(X, **args)
            b = kernels.pairs_f32(X, **args, lib=generic)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.skipif(not HAS_LIB, reason="no C compiler")
def test_pair_kernels_against_brute_force():
    rng = np.random.default_rng(7)
    n, d = 23, 70
    X = _collide(rng, n, d)
    rows = rng.permutation(n)
    lim = np.minimum(np.sort(rng.integers(0, n, size=n)), np.arange(n))
    w = rng.integers(-5, 9, size=n)
    Xr = X[rows]
    with np.errstate(over="ignore"):
        X32 = Xr.astype(np.float32)  # the 1e300 values become inf, as in the kernel
    want = np.zeros(d)
    want_flag = np.zeros(d, bool)
    want_sign = np.zeros(d)
    for k in range(n):
        for i in range(lim[k]):
            want += (w[k] - w[i]) * (X32[i] < X32[k])
            want_flag |= X32[i] == X32[k]
            want_sign += np.sign(Xr[k] - Xr[i])
    got, flag, valid = kernels.pairs_f32(X, lim=lim, w=w, rows=rows)
    assert valid and 0 < flag.sum() < d
    assert np.array_equal(got, want) and np.array_equal(flag, want_flag)
    cols = np.arange(d)[::-1].copy()
    assert np.array_equal(kernels.sign_pairs_f64(X, cols, lim, rows=rows), want_sign[cols])


def test_thread_ranges_cover_columns():
    for n_dom in (1, 63, 64, 65, 1023, 2048, 5000, 20_000):
        for t in (1, 2, 3, 16):
            parts = kernels._ranges(n_dom, t)
            assert parts[0][0] == 0 and parts[-1][1] == n_dom
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert all(a % 64 == 0 for a, _ in parts)


def test_no_compiler_falls_back_to_numpy(monkeypatch):
    def fail(extra_flags=()):
        raise RuntimeError("no C compiler (test)")

    monkeypatch.delenv("CURATE_PPL_NATIVE", raising=False)
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "_load", fail)
    with pytest.warns(UserWarning, match="using NumPy"):
        assert not kernels.active()
    rng = np.random.default_rng(8)
    X, y = _collide(rng, 12, 80), rng.random(12)
    for name in ALL:
        np.testing.assert_allclose(getattr(est, name)(X, y, kind="error"), _ref(name, X, y), rtol=1e-15, atol=2e-15)


@pytest.mark.skipif(not HAS_LIB or not hasattr(__import__("os"), "fork"), reason="needs the C kernels and fork")
def test_threads_work_in_a_forked_child(monkeypatch):
    """A child forked after the thread pool started must not wait on the parent's threads."""
    import multiprocessing as mp

    monkeypatch.setenv("CURATE_PPL_THREADS", "2")
    rng = np.random.default_rng(9)
    X, y = rng.random((20, 4096)), rng.random(20)
    want = est.spearmanr(X, y, kind="error")  # starts the pool in this process
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(est.spearmanr, (X, y), {"kind": "error"}).get(timeout=60)
    assert np.array_equal(got, want)
