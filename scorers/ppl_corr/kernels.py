"""Typed wrappers of the compiled perplexity-correlation kernels (``csrc/pplcorr.c``).

The extension ``scorers.ppl_corr._pplcorr`` is built when the package is installed (``setup.py``)
and picks its SIMD path at import (``engines.native``: ``CURATE_SIMD`` forces a narrower one).
Without it (no C compiler at install time), or with ``CURATE_NATIVE=0`` / ``CURATE_PPL_NATIVE=0``,
``active()`` is False and the estimators use their pure-NumPy path instead (same results, slower).

Algorithms for the rank sums ``sum_k w_k #{i: x_i < x_k}`` (``rank_sums``), chosen per call by
``choose_algorithm`` from N and the SIMD path (``CURATE_PPL_ALGO`` forces one; all give the same
numbers):

- ``pairs``: every model pair compared, N^2 / 2 compares per domain; fastest for small N.
- ``keys``: a sorting network over packed 32-bit keys (the value's float32 bits, its low
  ceil(log2 N) mantissa bits replaced by the model index), about N log2(N)^2 / 4 integer min/max
  per domain; domains where two values agree in all but those low bits are flagged by the kernel
  and recomputed exactly by ``pairs`` or ``sort``. Fastest from N ~ 16-32 up to a few hundred.
- ``sort``: the same network on float32 values carrying their weights: exact for every domain
  without a float32 tie, for large N (where packed keys would flag too many domains).

Threads: column ranges go to a thread pool (the kernels release the GIL). The count is
``CURATE_PPL_THREADS`` when set, else the CPUs this process may use (at most 16).
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from engines import native

__all__ = ["ABI", "MAX_MODELS", "ALGORITHMS", "active", "ext", "threads", "choose_algorithm", "rank_sums",
           "pairs_f32", "sign_pairs_f64", "weighted_sum"]

ABI = 1  # must match ABI_VERSION in csrc/pplcorr.c
EXTENSION = "scorers.ppl_corr._pplcorr"
ALGORITHMS = ("pairs", "keys", "sort")
_BLOCK = 64  # column ranges handed to threads start at multiples of this (every kernel's block divides it)
_MIN_COLS_PER_THREAD = 1024
# Partial sums per model are int32: |sum_{i<k} (w_k - w_i)| <= N (max w - min w) < 2^31. The
# estimators' weights are within [-2N, 2N] (twice the ranks of y, or the pair-sign counts).
MAX_MODELS = 16_384
# Packed keys keep ceil(log2 N) index bits: beyond 256 models too few value bits are left.
_KEYS_MAX_MODELS = 256

# Measured nanoseconds per domain per unit of work (pairs: per model pair; keys/sort: per
# compare-exchange of the network), on an Intel Xeon (Sapphire Rapids class) with every path
# forced in turn (benchmarks/perplexity_correlations.py --algorithms). Only their ratios matter.
_COST = {
    "scalar": {"pairs": 0.19, "keys": 0.49, "sort": 0.61},
    "neon": {"pairs": 0.19, "keys": 0.49, "sort": 0.61},
    "avx2": {"pairs": 0.092, "keys": 0.145, "sort": 0.317},
    "avx512": {"pairs": 0.047, "keys": 0.104, "sort": 0.172},
}

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def ext() -> Any:
    """The compiled extension, or None (not built, stale, or turned off)."""
    if os.environ.get("CURATE_PPL_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return native.load(EXTENSION, ABI)


def active() -> bool:
    """Whether the estimators use the compiled kernels."""
    return ext() is not None


def threads() -> int:
    env = os.environ.get("CURATE_PPL_THREADS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))


@functools.lru_cache(maxsize=512)
def _network_size(n: int) -> int:
    mod = ext()
    return int(mod.network_size(n)) if mod is not None else 0


def choose_algorithm(n: int, path: str | None = None) -> str:
    """The fastest exact algorithm for N models on this SIMD path (``CURATE_PPL_ALGO`` forces one)."""
    forced = os.environ.get("CURATE_PPL_ALGO", "").strip().lower()
    if forced:
        if forced not in ALGORITHMS:
            raise ValueError(f"CURATE_PPL_ALGO={forced!r}: expected one of {', '.join(ALGORITHMS)}")
        return forced
    mod = ext()
    cost = _COST.get(path or (mod.path() if mod is not None else "scalar"), _COST["scalar"])
    est = {"pairs": cost["pairs"] * n * (n - 1) / 2, "sort": cost["sort"] * _network_size(n)}
    if n <= _KEYS_MAX_MODELS:
        est["keys"] = cost["keys"] * _network_size(n)
    return min(est, key=est.__getitem__)


def _exact_algorithm(n: int) -> str:
    """The faster of the two algorithms that need no refinement."""
    algo = choose_algorithm(n)
    if algo != "keys":
        return algo
    cost = _COST.get(ext().path(), _COST["scalar"])
    return "pairs" if cost["pairs"] * n * (n - 1) / 2 <= cost["sort"] * _network_size(n) else "sort"


def _after_fork_in_child() -> None:
    # a forked child inherits the pool object but not its threads: start a new one on demand
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 16), thread_name_prefix="ppl-corr")
    return _pool


def _matrix(X: np.ndarray) -> np.ndarray:
    """X as float64 with unit column stride (a copy only when needed): the kernels take any row stride."""
    if X.dtype != np.float64 or X.ndim != 2 or (X.shape[1] > 1 and X.strides[1] != 8) or X.strides[0] % 8 \
            or (X.shape[0] > 1 and X.strides[0] < 8 * X.shape[1]):
        X = np.ascontiguousarray(X, dtype=np.float64)
    return X


def _prepared(X: np.ndarray) -> tuple[Any, np.ndarray]:
    """The extension and X as the kernels take it; at most ``MAX_MODELS`` rows."""
    mod = ext()
    assert mod is not None, "compiled kernels are not available"
    X = _matrix(X)
    if X.shape[0] > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} models")
    return mod, X


def _ranges(n_dom: int, n_threads: int) -> list[tuple[int, int]]:
    t = max(1, min(n_threads, n_dom // _MIN_COLS_PER_THREAD))
    blocks = -(-n_dom // _BLOCK)
    cuts = [min(n_dom, (blocks * j // t) * _BLOCK) for j in range(t + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _split(n_dom: int, n_threads: int | None, run: Callable[[int, int], int]) -> bool:
    """Runs ``run(c0, c1)`` over column ranges (threads when there are several); True when no
    range reported an invalid value."""
    parts = _ranges(n_dom, threads() if n_threads is None else n_threads)
    if len(parts) <= 1:
        bad = [run(*p) for p in parts]
    else:
        bad = [f.result() for f in [_executor().submit(run, a, b) for a, b in parts]]
    return not any(bad)


def _weights32(w: np.ndarray, n: int) -> np.ndarray:
    w64 = np.asarray(w, dtype=np.int64)
    if w64.shape != (n,) or (n and n * int(w64.max() - w64.min()) >= 2**31):
        raise ValueError("w must hold N integers with N * (max - min) < 2^31")
    return np.ascontiguousarray(w64, dtype=np.int32)


def _lim_index(lim: np.ndarray, n: int) -> np.ndarray:
    lim64 = np.ascontiguousarray(lim, dtype=np.int64)
    if lim64.shape != (n,) or np.any(lim64 < 0) or np.any(lim64 > np.arange(n)):
        raise ValueError("lim[k] must be in [0, k]")
    return lim64


def _rows_index(rows: np.ndarray, n: int) -> np.ndarray:
    rows64 = np.ascontiguousarray(rows, dtype=np.int64)
    if rows64.shape != (n,) or (n and (rows64.min() < 0 or rows64.max() >= n)):
        raise ValueError("rows must hold N row indices")
    return rows64


def rank_sums(X: np.ndarray, w: np.ndarray, n_threads: int | None = None,
              algorithm: str | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per domain d: ``sum_k w_k #{i: x_i < x_k}`` (integer ``w``), exact wherever the returned
    flag is False; the flag marks domains with a tie in float32 (their float64 sum must be
    recomputed); and whether every value of X was finite and non-negative.
    ``algorithm``: ``pairs``, ``keys`` or ``sort`` (default: ``choose_algorithm``)."""
    mod, X = _prepared(X)
    n, n_dom = X.shape
    w32 = _weights32(w, n)
    algo = algorithm or choose_algorithm(n)
    if algo == "pairs":
        out, flag, valid = pairs_f32(X, np.arange(n), w=w32, n_threads=n_threads)
        # sum_k w_k cnt_k = sum_{i<k} (w_i [x_i > x_k] + w_k [x_i < x_k]); without ties
        # [x_i > x_k] = 1 - [x_i < x_k], so it is sum_{i<k} w_i + the kernel's pair sum.
        out += float(w32.astype(np.int64) @ (n - 1 - np.arange(n)))
        return out, flag, valid
    if algo not in ("keys", "sort"):
        raise ValueError(f"unknown algorithm {algo!r}; expected one of {', '.join(ALGORITHMS)}")
    out = np.empty(n_dom, dtype=np.float64)
    flag = np.empty(n_dom, dtype=np.uint8)
    kernel = mod.rank_sums_keys if algo == "keys" else mod.rank_sums_sort
    valid = _split(n_dom, n_threads, lambda c0, c1: int(kernel(X, w32, c0, c1, out, flag)))
    flag_b = flag.view(bool)
    if algo == "keys" and valid:
        near = np.flatnonzero(flag_b)
        if near.size:  # two values equal but for their low mantissa bits: recompute exactly
            exact = _exact_algorithm(n)
            sub, sub_flag, _ = rank_sums(np.ascontiguousarray(X[:, near]), w32, n_threads, exact)
            out[near] = sub
            flag_b[near] = sub_flag
    return out, flag_b, valid


def pairs_f32(
    X: np.ndarray,
    lim: np.ndarray,
    w: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per domain d: ``sum_k sum_{i < lim[k]} (w[k] - w[i]) [x_i < x_k]`` (weight 1 without ``w``),
    with models taken in the order ``rows`` (all of them, by default), compared in float32;
    a flag (bool) set where some counted pair is equal in float32 (result not exact there);
    and whether every value of X was finite and non-negative (checked while copying).
    """
    mod, X = _prepared(X)
    n, n_dom = X.shape
    lim64 = _lim_index(lim, n)
    w32 = None if w is None else _weights32(w, n)
    rows64 = None if rows is None else _rows_index(rows, n)
    out = np.empty(n_dom, dtype=np.float64)
    flag = np.empty(n_dom, dtype=np.uint8)
    valid = _split(n_dom, n_threads, lambda c0, c1: int(mod.pairs(X, lim64, w32, rows64, c0, c1, out, flag)))
    return out, flag.view(bool), valid


def sign_pairs_f64(X: np.ndarray, cols: np.ndarray, lim: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact float64 ``sum_k sum_{i < lim[k]} sign(x_k - x_i)`` for the domains ``cols``."""
    mod, X = _prepared(X)
    n = X.shape[0]
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    if cols.size and (cols.min() < 0 or cols.max() >= X.shape[1]):
        raise IndexError("column index out of range")
    lim64 = _lim_index(lim, n)
    rows64 = None if rows is None else _rows_index(rows, n)
    out = np.empty(cols.size, dtype=np.float64)
    if cols.size:
        mod.sign_pairs_f64(X, cols, lim64, rows64, out)
    return out


def weighted_sum(X: np.ndarray, coef: np.ndarray, n_threads: int | None = None) -> tuple[np.ndarray, bool]:
    """Per domain d: ``sum_k coef[k] X[k, d]`` in float64 (k ascending), reading X once; and
    whether every value of X was finite and non-negative."""
    mod, X = _prepared(X)
    n, n_dom = X.shape
    c = np.ascontiguousarray(coef, dtype=np.float64)
    if c.shape != (n,):
        raise ValueError("coef must hold N values")
    out = np.empty(n_dom, dtype=np.float64)
    valid = _split(n_dom, n_threads, lambda c0, c1: int(mod.weighted_sum(X, c, c0, c1, out)))
    return out, valid
