"""The compiled estimator kernels (scorers.ppl_corr.kernels) against the reference package,
brute force and the pure-NumPy path: ties, float32 collisions, odd shapes, threads, every SIMD
path and every rank-sum algorithm."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from engines import native
from scorers.ppl_corr import estimators as est
from scorers.ppl_corr import kernels

ref_est = pytest.importorskip("perplexity_correlations.estimation")

RANK = ["spearmanr", "sign_cdf", "sign_sign"]
ALL = RANK + ["sign", "product"]
HAS_LIB = kernels.ext() is not None
PATHS = native.paths()


@pytest.fixture(params=["native", "numpy"])
def backend(request, monkeypatch):
    if request.param == "native":
        if not HAS_LIB:
            pytest.skip("compiled kernels not built")
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
        pytest.skip("compiled kernels not built")
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


def _brute_rank_sums(X, w):
    """sum_k w_k #{i: x_i < x_k} in float64 and the float32-tie flag, by brute force."""
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    cnt = (X[None, :, :] < X[:, None, :]).sum(axis=1)
    ties = ((X32[None, :, :] == X32[:, None, :]).sum(axis=1) > 1).any(axis=0)
    return (w[:, None] * cnt).sum(axis=0).astype(np.float64), ties


@pytest.mark.skipif(not HAS_LIB, reason="compiled kernels not built")
@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
def test_every_path_and_algorithm_gives_the_brute_force_rank_sums(algorithm):
    """Each SIMD path x each algorithm (pairs, packed-key network, weighted network): the same
    sums as brute force wherever unflagged, and exactly the float32-tie domains flagged."""
    rng = np.random.default_rng(6)
    for n, d in [(2, 1), (3, 70), (17, 64), (37, 129), (90, 300), (130, 67), (300, 40)]:
        X = _collide(rng, n, d)
        w = rng.integers(-2 * n, 2 * n, size=n)
        want, want_flag = _brute_rank_sums(X, w)
        results = []
        for path in PATHS:
            with native.use_path(path):
                for threads in (1, 2):
                    got, flag, valid = kernels.rank_sums(X, w, n_threads=threads, algorithm=algorithm)
                    assert valid
                    assert np.array_equal(flag, want_flag), (path, n, d)
                    assert np.array_equal(got[~flag], want[~flag]), (path, n, d)
                    results.append(got[~flag])
        assert all(np.array_equal(r, results[0]) for r in results)


@pytest.mark.skipif(not HAS_LIB, reason="compiled kernels not built")
def test_packed_keys_refine_near_ties_exactly():
    """Values equal in all but their low float32 mantissa bits collide in the packed keys: the
    kernel flags them and the wrapper recomputes them, so the result is still exact."""
    rng = np.random.default_rng(12)
    n, d = 90, 256
    X = rng.random((n, d))
    base = np.float32(0.7)
    for j in range(0, d, 3):  # differ only in the lowest mantissa bits
        rows = rng.choice(n, size=4, replace=False)
        X[rows, j] = np.nextafter(base, np.float32(1), dtype=np.float32) * (1 + np.arange(4) * 1e-7)
    w = rng.integers(-2 * n, 2 * n, size=n)
    want, want_flag = _brute_rank_sums(X, w)
    got, flag, _ = kernels.rank_sums(X, w, algorithm="keys")
    assert np.array_equal(flag, want_flag) and np.array_equal(got[~flag], want[~flag])


def test_algorithm_choice_follows_the_cost_model(monkeypatch):
    if not HAS_LIB:
        pytest.skip("compiled kernels not built")
    monkeypatch.delenv("CURATE_PPL_ALGO", raising=False)
    for path in ("scalar", "avx2", "avx512"):
        assert kernels.choose_algorithm(3, path) == "pairs"
        assert kernels.choose_algorithm(90, path) == "keys"
        assert kernels.choose_algorithm(1000, path) == "sort"
    monkeypatch.setenv("CURATE_PPL_ALGO", "sort")
    assert kernels.choose_algorithm(3) == "sort"
    monkeypatch.setenv("CURATE_PPL_ALGO", "bogus")
    with pytest.raises(ValueError, match="CURATE_PPL_ALGO"):
        kernels.choose_algorithm(3)


@pytest.mark.skipif(not HAS_LIB, reason="compiled kernels not built")
@pytest.mark.parametrize("name", ALL)
def test_estimators_identical_on_every_path_and_algorithm(name, monkeypatch):
    """The estimators give the same bits on every SIMD path and rank-sum algorithm, and match the
    reference package (tie-heavy columns and tied benchmark scores included)."""
    rng = np.random.default_rng(21)
    n = 60
    X = _collide(rng, n, 700)
    y = rng.random(n)
    y[:20] = np.round(y[:20], 1)
    want = _ref(name, X, y)
    first = None
    for path in PATHS:
        with native.use_path(path):
            for algorithm in kernels.ALGORITHMS:
                monkeypatch.setenv("CURATE_PPL_ALGO", algorithm)
                got = getattr(est, name)(X, y, kind="error")
                np.testing.assert_allclose(got, want, rtol=1e-15, atol=2e-15)
                if name == "spearmanr":
                    assert np.array_equal(got, want)
                first = got if first is None else first
                assert np.array_equal(got, first), (path, algorithm)


@pytest.mark.skipif(not HAS_LIB, reason="compiled kernels not built")
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
    for path in PATHS:
        with native.use_path(path):
            again = kernels.pairs_f32(X, lim=lim, w=w, rows=rows)
            assert np.array_equal(again[0], got) and np.array_equal(again[1], flag)
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


def test_without_the_extension_numpy_gives_the_same_results(monkeypatch):
    monkeypatch.setattr(kernels, "ext", lambda: None)
    assert not kernels.active()
    rng = np.random.default_rng(8)
    X, y = _collide(rng, 12, 80), rng.random(12)
    for name in ALL:
        np.testing.assert_allclose(getattr(est, name)(X, y, kind="error"), _ref(name, X, y), rtol=1e-15, atol=2e-15)


@pytest.mark.skipif(not HAS_LIB, reason="compiled kernels not built")
def test_weighted_sum_is_one_pass_and_path_independent():
    rng = np.random.default_rng(13)
    X = rng.random((33, 1500))
    c = rng.normal(size=33)
    outs = []
    for path in PATHS:
        with native.use_path(path):
            for threads in (1, 2):
                out, valid = kernels.weighted_sum(X, c, n_threads=threads)
                assert valid
                outs.append(out)
    assert all(np.array_equal(o, outs[0]) for o in outs)
    # k ascending, one rounding per multiply and per add: the plain float64 loop
    want = np.zeros(1500)
    for k in range(33):
        want = want + c[k] * X[k]
    assert np.array_equal(outs[0], want)
    X[3, 1234] = np.nan
    assert not kernels.weighted_sum(X, c)[1]


@pytest.mark.skipif(not HAS_LIB or not hasattr(__import__("os"), "fork"), reason="needs the compiled kernels and fork")
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
