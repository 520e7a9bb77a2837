"""Rank-based perplexity-correlation estimators (Thrush, Potts & Hashimoto, 2024).

Inputs
------
``X``: bits-per-byte, shape ``(N models, D domains)``, float64, non-negative.
``y``: one benchmark score per model, shape ``(N,)``, with an explicit ``kind``:
``"error"`` (lower is better) or ``"accuracy"`` (higher is better). Accuracy is
turned into error as ``1 - accuracy``, the convention of the reference package
``perplexity-correlations`` (its docstrings define ``y`` as "benchmark error
(1-accuracy)"). For the rank/sign estimators ``1 - acc`` and ``-acc`` give the same
result; for ``product`` only ``1 - acc`` matches the package.

Sign convention (same as the package, no negation): every estimator measures the
association between a domain's bits-per-byte and the benchmark *error*. A HIGH
score means "models with lower loss on this domain have lower benchmark error",
i.e. the domain is a good one to train on. Projections pick the highest scores.

Estimators (the package's names and normalisations; pairs are unordered model pairs)
------------------------------------------------------------------------------------
``spearmanr``  1 - 6 sum_k (rank y_k - rank x_k)^2 / (N (N^2 - 1)), ordinal ranks 1..N.
``sign_cdf``   2/(N(N-1)) sum_{i<k} sign(y_k - y_i) (F(x_k) - F(x_i)),  F = rank / N.
``sign_sign``  2/(N(N-1)) sum_{i<k} sign(y_k - y_i) sign(x_k - x_i)  (Kendall tau-a).
``sign``       2/(N(N-1)) sum_{i<k} sign(y_k - y_i) (x_k - x_i).
``product``    mean_k y_k x_k.

How they are computed here (all exact)
--------------------------------------
* ``sign`` / ``product``: the pair sum of ``sign`` is linear in x, so
  sum_{i<k} sign(y_k - y_i)(x_k - x_i) = sum_k c_k x_k with
  c_k = #{i: y_i < y_k} - #{i: y_i > y_k}; one O(N log N) pass over y and one weighted sum
  over X: a compiled kernel that reads X once and checks its values on the way (NumPy/BLAS
  after a value check without it). ``product`` is bound by memory bandwidth.
* ``spearmanr`` / ``sign_cdf``: rank sums. With cnt_k = #{i: x_i < x_k} (rank x_k = 1 + cnt_k
  when the column has no tie), both reduce to S = sum_k w_k cnt_k for integer weights:
  ``spearmanr`` takes w = 2 rank y (mid-ranks are half-integers) and
  sum (ry - rx)^2 = sum ry^2 + N(N+1)(2N+1)/6 - 2 sum ry rx, an exact integer finished with the
  package's own expression, so results are bit for bit the package's; ``sign_cdf`` takes
  w = c_k above: sum_k c_k rank_k = sum_k c_k cnt_k since sum_k c_k = 0.
  S comes from compiled kernels (``scorers/ppl_corr/csrc/pplcorr.c``, built at install time,
  see ``kernels.py``) that vectorise ACROSS domains: a block of adjacent domains (X is
  C-contiguous, so one row of a block is contiguous) is copied into an L1-sized buffer as
  float32, one SIMD lane per domain. Three algorithms, chosen per call from N and the CPU's SIMD
  path (``kernels.choose_algorithm``): every model pair compared (N^2 / 2 compares, best for
  small N); Batcher's sorting network over packed 32-bit keys (the float32 bits with the model
  index in the low mantissa bits: N log2(N)^2 / 4 integer min/max, e.g. 986 for N = 90 against
  4,005 pairs; domains where two values differ only in those low bits are flagged and
  recomputed exactly); or the same network carrying the weights beside float32 values (large N).
* ``sign_sign`` (Kendall tau-a): models are reordered by increasing error (stable), so
  sign(err_k - err_i) = +1 exactly for the before[k] models with strictly smaller error
  (ties in error give 0 and are not visited); the pair kernel counts the pairs i < before[k]
  with x_i < x_k, and without ties in x the sum of signs is 2 * count - #pairs.

  Why float32 is exact: rounding to float32 is monotone, so x_i < x_k in float32 implies
  x_i < x_k in float64; it can only merge two different values into a tie. The kernels flag
  every domain with a tie in float32 (a float64 tie or one created by rounding). In an
  unflagged domain every pair is strictly ordered the same way in both precisions, and all
  sums are integers (accumulated in int32, then in float64), so the result is exactly the
  float64 one. Flagged domains are recomputed exactly: ``spearmanr`` and ``sign_cdf`` by the
  NumPy rank path below (the package's tie order or mid-ranks); ``sign_sign`` by a float64 C
  pass in which ties count 0. The kernels also check the values of X (finite, >= 0) while
  copying, so X is read once. Domain blocks are split over threads (``CURATE_PPL_THREADS``,
  default: the CPUs this process may use, at most 16); no result depends on the thread count,
  the SIMD path or the algorithm.
* Without the compiled kernels (not built, or ``CURATE_NATIVE=0`` / ``CURATE_PPL_NATIVE=0``) the
  same estimators run in NumPy with the same results: ranks by one argsort per domain, reduced
  through matrix-vector products (exact integer sums); for ``sign_sign`` a bitset of the
  sorted-x positions already seen, two popcounts per 64-bit word, O(N D ceil(N/64)) after
  one argsort per domain. Ties count 0 in ``sign_sign``, exactly as ``sign(0) == 0``.

Ties
----
``sign_sign``, ``sign`` and ``product`` have no tie convention to choose (ties give
``sign(0) = 0``). ``spearmanr`` and ``sign_cdf`` use ordinal ranks in the package,
``argsort(argsort(.))`` with NumPy's default (unstable) sort, so tied values get
distinct ranks in whatever order that sort leaves them. ``ties="reference"`` (default)
reproduces this bit for bit on the same machine by ranking with the same default
``np.argsort``; note that this order can differ between CPUs (NumPy dispatches
different sort kernels). ``ties="average"`` uses mid-ranks instead: deterministic
everywhere and the textbook treatment; it equals ``"reference"`` when there are no ties.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np

from scorers.ppl_corr import kernels as _kernels

__all__ = [
    "ESTIMATORS",
    "EstimatorName",
    "YKind",
    "Ties",
    "to_error",
    "estimate",
    "spearmanr",
    "sign_cdf",
    "sign_sign",
    "sign",
    "product",
]

YKind = Literal["error", "accuracy"]
Ties = Literal["reference", "average"]
EstimatorName = Literal["spearmanr", "sign_cdf", "sign_sign", "sign", "product"]

# Domains are processed in blocks of this many columns to bound memory.
_BLOCK = 8192


# ---------------------------------------------------------------------------
# input checks and the sign guard
# ---------------------------------------------------------------------------


def to_error(y: np.ndarray, kind: YKind) -> np.ndarray:
    """Return the benchmark error (lower is better) as float64.

    ``kind`` is required on purpose: passing accuracy where error is expected would
    silently flip the ranking of domains. Accuracy becomes ``1 - accuracy``.
    """
    if kind not in ("error", "accuracy"):
        raise ValueError(f"kind must be 'error' or 'accuracy', got {kind!r}")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y has {y.ndim} dimensions but expected 1")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values")
    if np.any((y < 0) | (y > 1)):
        raise ValueError(
            f"y ({kind}) must be a fraction in [0, 1]; got values in "
            f"[{y.min():g}, {y.max():g}] (percentages? divide by 100)"
        )
    return 1.0 - y if kind == "accuracy" else y.copy()


def _check(X: np.ndarray, y: np.ndarray, kind: YKind, scan_x: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Shapes, ``y`` and (unless ``scan_x`` is False: the compiled kernels check the
    values while they copy X, see ``_check_x_values``) the values of X."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X has {X.ndim} dimensions but expected 2 (models x domains)")
    err = to_error(y, kind)
    if X.shape[0] != err.shape[0]:
        raise ValueError(f"X has {X.shape[0]} models (rows) but y has {err.shape[0]}")
    if X.shape[0] < 2:
        raise ValueError("need at least 2 models")
    if scan_x or X.shape[1] == 0:
        _check_x_values(X)
    return X, err


def _check_x_values(X: np.ndarray) -> None:
    lo, hi = X.min(), X.max()  # two reductions, no temporaries; NaN propagates
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("X contains NaN or infinite values")
    if lo < 0:
        # Log-likelihoods (<= 0, higher is better) instead of bits-per-byte would
        # flip the sign of every estimate.
        raise ValueError("X has negative entries: expected bits-per-byte (>= 0)")


def _kernel_checked(X: np.ndarray, valid: bool) -> None:
    """The compiled kernels found a negative, NaN or infinite value: raise the usual error."""
    if not valid:
        _check_x_values(X)
        raise AssertionError("kernel reported invalid values that the NumPy check accepts")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _pair_sign_weights(err: np.ndarray) -> np.ndarray:
    """c_k = #{i: err_i < err_k} - #{i: err_i > err_k} (ties count zero)."""
    s = np.sort(err)
    below = np.searchsorted(s, err, side="left")
    above = err.size - np.searchsorted(s, err, side="right")
    return (below - above).astype(np.float64)


def _ordinal_ranks_1d(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n; ties broken by NumPy's default argsort, as in the package."""
    order = np.argsort(v)
    r = np.empty(v.size, dtype=np.float64)
    r[order] = np.arange(1, v.size + 1, dtype=np.float64)
    return r


def _average_ranks_1d(v: np.ndarray) -> np.ndarray:
    s = np.sort(v)
    lo = np.searchsorted(s, v, side="left")
    hi = np.searchsorted(s, v, side="right")
    return (lo + hi + 1) / 2.0


def _block_ranks(XT: np.ndarray, ties: Ties) -> np.ndarray:
    """Ranks (1..N, float64) of each row of XT (domains x models)."""
    n_dom, n = XT.shape
    order = np.argsort(XT, axis=1)  # default kind: the package's tie order
    if ties == "reference":
        ranks = np.empty((n_dom, n), dtype=np.float64)
        np.put_along_axis(
            ranks, order, np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), (n_dom, n)), axis=1
        )
        return ranks
    if ties == "average":
        xs = np.take_along_axis(XT, order, axis=1)
        pos = np.arange(n)
        new = np.ones((n_dom, n), dtype=bool)
        new[:, 1:] = xs[:, 1:] != xs[:, :-1]
        # first and last sorted position of each tie group
        first = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
        end_new = np.ones((n_dom, n), dtype=bool)
        end_new[:, :-1] = new[:, 1:]
        last = np.minimum.accumulate(np.where(end_new, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
        mid = (first + last) / 2.0 + 1.0
        ranks = np.empty((n_dom, n), dtype=np.float64)
        np.put_along_axis(ranks, order, mid, axis=1)
        return ranks
    raise ValueError(f"ties must be 'reference' or 'average', got {ties!r}")


def _blocks(n_dom: int):
    for start in range(0, n_dom, _BLOCK):
        yield slice(start, min(start + _BLOCK, n_dom))


# ---------------------------------------------------------------------------
# estimators
# ---------------------------------------------------------------------------


def _linear(X: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """sum_k coef_k x_k per domain: one pass of the compiled kernel over X (it checks the values
    on the way), else NumPy/BLAS after the value check."""
    if _use_native(X.shape[0], X.shape[1]):
        out, valid = _kernels.weighted_sum(X, coef)
        _kernel_checked(X, valid)
        return out
    _check_x_values(X)
    return coef @ X


def product(X: np.ndarray, y: np.ndarray, *, kind: YKind) -> np.ndarray:
    """mean_k err_k * x_k per domain (Plan et al. 2016). Not robust to outliers."""
    X, err = _check(X, y, kind, scan_x=False)
    out = _linear(X, err)
    out /= X.shape[0]
    return out


def sign(X: np.ndarray, y: np.ndarray, *, kind: YKind) -> np.ndarray:
    """U-statistic of sign(err_k - err_i) (x_k - x_i) over model pairs (Chen & Banerjee)."""
    X, err = _check(X, y, kind, scan_x=False)
    n = X.shape[0]
    out = _linear(X, _pair_sign_weights(err))
    out *= 2.0 / (n * (n - 1))
    return out


def _use_native(n: int, n_dom: int) -> bool:
    """Compiled kernels unless turned off (``CURATE_NATIVE=0``, ``CURATE_PPL_NATIVE=0``) or not built."""
    return n <= _kernels.MAX_MODELS and n_dom > 0 and _kernels.active()


def _rank_sum(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compiled path: per domain ``sum_k w_k #{i: x_i < x_k}`` (integer ``w``) and the flag of
    domains with a float32 tie (their sum is not the float64 one and must be recomputed)."""
    s, flag, valid = _kernels.rank_sums(X, w)
    _kernel_checked(X, valid)
    return s, flag


def _sign_cdf_numpy(X: np.ndarray, c: np.ndarray, ties: Ties) -> np.ndarray:
    n, n_dom = X.shape
    out = np.empty(n_dom, dtype=np.float64)
    for sl in _blocks(n_dom):
        # R @ c is an exact integer (or half-integer) sum: same value as the compiled path
        out[sl] = _block_ranks(np.ascontiguousarray(X[:, sl].T), ties) @ c
    return out * (2.0 / (n * (n - 1))) / n


def sign_cdf(X: np.ndarray, y: np.ndarray, *, kind: YKind, ties: Ties = "reference") -> np.ndarray:
    """U-statistic of sign(err_k - err_i) (F(x_k) - F(x_i)), F = column rank / N."""
    X, err = _check(X, y, kind, scan_x=False)
    if ties not in ("reference", "average"):
        raise ValueError(f"ties must be 'reference' or 'average', got {ties!r}")
    n, n_dom = X.shape
    c = _pair_sign_weights(err)  # integers, sum 0
    if not _use_native(n, n_dom):
        _check_x_values(X)
        return _sign_cdf_numpy(X, c, ties)
    # sum_k c_k rank_k = sum_k c_k (1 + cnt_k) = sum_k c_k cnt_k  (sum_k c_k = 0)
    out, flag = _rank_sum(X, c.astype(np.int32))
    out *= 2.0 / (n * (n - 1))
    out /= n
    idx = np.flatnonzero(flag)
    if idx.size:
        out[idx] = _sign_cdf_numpy(X[:, idx], c, ties)
    return out


def _spearman_numpy(X: np.ndarray, ry: np.ndarray, ties: Ties) -> np.ndarray:
    n, n_dom = X.shape
    ry2 = float(ry @ ry)
    out = np.empty(n_dom, dtype=np.float64)
    for sl in _blocks(n_dom):
        R = _block_ranks(np.ascontiguousarray(X[:, sl].T), ties)
        # sum (ry - rx)^2 = sum ry^2 + sum rx^2 - 2 ry.rx ; all terms are exact
        # in float64 for integer and half-integer ranks of realistic N.
        d2 = ry2 + np.einsum("ij,ij->i", R, R) - 2.0 * (R @ ry)
        out[sl] = 1.0 - 6.0 * d2 / (n * (n * n - 1.0))  # the package's expression
    return out


def spearmanr(X: np.ndarray, y: np.ndarray, *, kind: YKind, ties: Ties = "reference") -> np.ndarray:
    """Per-domain Spearman correlation 1 - 6 sum d^2 / (N (N^2 - 1)) of x with err."""
    X, err = _check(X, y, kind, scan_x=False)
    if ties not in ("reference", "average"):
        raise ValueError(f"ties must be 'reference' or 'average', got {ties!r}")
    n, n_dom = X.shape
    ry = _ordinal_ranks_1d(err) if ties == "reference" else _average_ranks_1d(err)
    if not _use_native(n, n_dom):
        _check_x_values(X)
        return _spearman_numpy(X, ry, ties)
    w2 = 2.0 * ry  # integers (mid-ranks are half-integers)
    out, flag = _rank_sum(X, w2.astype(np.int32))  # s2 = sum_k w2_k cnt_k
    # without x ties rank x_k = 1 + cnt_k, so 2 sum ry rx = sum w2 + s2 and sum rx^2 is
    # N(N+1)(2N+1)/6: d2 = C - s2 with C below, an exact integer (quarter-integers for mid-ranks).
    C = float(ry @ ry) + n * (n + 1) * (2 * n + 1) / 6 - float(w2.sum())
    # 1 - 6 d2 / (N(N^2-1)), the package's expression, evaluated in place as
    # ((s2 - C) * 6) / denominator + 1: the same roundings (negation is exact).
    out -= C
    out *= 6.0
    out /= n * (n * n - 1.0)
    out += 1.0
    idx = np.flatnonzero(flag)
    if idx.size:
        out[idx] = _spearman_numpy(X[:, idx], ry, ties)
    return out


def _bit_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """bit[w, r]: word w of the bitset {r}; low[w, r]: word w of {0, ..., r-1}.

    r ranges over 0..n (low needs r = n for "everything").
    """
    words = (n + 63) // 64
    r = np.arange(n + 1)
    bit = np.zeros((words, n + 1), dtype=np.uint64)
    low = np.zeros((words, n + 1), dtype=np.uint64)
    one = np.uint64(1)
    for w in range(words):
        rel = r - 64 * w
        inside = (rel >= 0) & (rel < 64)
        bit[w, inside] = one << rel[inside].astype(np.uint64)
        full = rel >= 64
        low[w, full] = np.uint64(0xFFFFFFFFFFFFFFFF)
        part = (rel > 0) & (rel < 64)
        low[w, part] = (one << rel[part].astype(np.uint64)) - one
    return bit, low


def _sign_sign_numpy(X_by_err: np.ndarray, before: np.ndarray) -> np.ndarray:
    """sum_k sum_{i < before[k]} sign(x_k - x_i) per domain, rows of X in error order."""
    n, n_dom = X_by_err.shape
    # prefix index: the OR of bits of visited models 0..before[j]-1 is row before[j]
    # of the exclusive cumulative OR (row 0 is the empty set).
    bit, low = _bit_tables(n)
    words = bit.shape[0]
    out = np.empty(n_dom, dtype=np.float64)
    base = float(before.sum())
    for sl in _blocks(n_dom):
        XT = np.ascontiguousarray(X_by_err[:, sl].T)  # (m domains, n models by error)
        m = XT.shape[0]
        order = np.argsort(XT, axis=1)
        # pos[d, k]: position of model k in domain d's sorted order (one bit each)
        pos = np.empty((m, n), dtype=np.intp)
        np.put_along_axis(pos, order, np.broadcast_to(np.arange(n), (m, n)), axis=1)
        r = np.ascontiguousarray(pos.T)  # (n, m): the cumulative OR runs over rows
        xs = np.take_along_axis(XT, order, axis=1)
        tied = xs[:, 1:] == xs[:, :-1]  # sorted neighbours with equal x
        if tied.any():
            # tie group [first, end) of sorted positions, mapped back to models
            tied_t = np.ascontiguousarray(tied.T)  # (n-1, m)
            first_s = np.empty((n, m), dtype=np.intp)
            end_s = np.empty((n, m), dtype=np.intp)
            first_s[0] = 0
            for j in range(1, n):
                first_s[j] = np.where(tied_t[j - 1], first_s[j - 1], j)
            end_s[n - 1] = n
            for j in range(n - 2, -1, -1):
                end_s[j] = np.where(tied_t[j], end_s[j + 1], j + 1)
            first = np.take_along_axis(first_s, r, axis=0)
            end = np.take_along_axis(end_s, r, axis=0)
        else:
            first, end = r, r + 1
        total = np.zeros(m, dtype=np.int64)
        seen = np.empty((n, m), dtype=np.uint64)
        for w in range(words):
            b = bit[w][r]
            # seen[k] = OR of the bits of the models with strictly smaller error
            acc = np.zeros(m, dtype=np.uint64)
            j = 0
            for k in range(n):
                while j < before[k]:
                    acc |= b[j]
                    j += 1
                seen[k] = acc
            lw = low[w]
            total += np.bitwise_count(seen & lw[first]).sum(axis=0, dtype=np.int64)  # x_i < x_k
            total += np.bitwise_count(seen & lw[end]).sum(axis=0, dtype=np.int64)  # x_i <= x_k
        # per pair (smaller-error i, larger-error k): [x_i < x_k] counted twice,
        # [x_i == x_k] once, [x_i > x_k] never; minus one per pair = sign(x_k - x_i).
        out[sl] = total - base
    return out


def sign_sign(X: np.ndarray, y: np.ndarray, *, kind: YKind) -> np.ndarray:
    """U-statistic of sign(err_k - err_i) sign(x_k - x_i): Kendall's tau-a per domain."""
    X, err = _check(X, y, kind, scan_x=False)
    n, n_dom = X.shape
    # visit models by increasing error; `before[j]` = number of models with strictly
    # smaller error than the j-th visited one (models tied in error give 0).
    y_order = np.argsort(err, kind="stable")
    e_sorted = err[y_order]
    before = np.searchsorted(e_sorted, e_sorted, side="left")
    scale = 2.0 / (n * (n - 1))
    if not _use_native(n, n_dom):
        _check_x_values(X)
        return _sign_sign_numpy(X[y_order], before) * scale
    # float32 pass: #{counted pairs with x_i < x_k}; without ties in a counted pair the
    # others have x_i > x_k, so the sign sum is 2 * count - #pairs.
    total, flag, valid = _kernels.pairs_f32(X, lim=before, rows=y_order)
    _kernel_checked(X, valid)
    total *= 2.0
    total -= float(before.sum())
    idx = np.flatnonzero(flag)
    if idx.size:  # a float32 (maybe float64) tie in a counted pair: exact float64 pass
        total[idx] = _kernels.sign_pairs_f64(X, idx, before, rows=y_order)
    total *= scale
    return total


ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "spearmanr": spearmanr,
    "sign_cdf": sign_cdf,
    "sign_sign": sign_sign,
    "sign": sign,
    "product": product,
}


def estimate(
    X: np.ndarray,
    y: np.ndarray,
    *,
    kind: YKind,
    method: EstimatorName = "spearmanr",
    ties: Ties = "reference",
) -> np.ndarray:
    """Per-domain correlation scores (length D); higher = better domain to train on."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown estimator {method!r}; expected one of {sorted(ESTIMATORS)}")
    if method in ("spearmanr", "sign_cdf"):
        return ESTIMATORS[method](X, y, kind=kind, ties=ties)
    return ESTIMATORS[method](X, y, kind=kind)
