"""ctypes wrappers of the compiled perplexity-correlation kernels (``_csrc.py``).

The library is compiled once per machine by ``engines.native`` (system C compiler). When there
is no compiler, or ``CURATE_PPL_NATIVE=0``, ``active()`` is False and the estimators use their
pure-NumPy path instead (same results, slower).

Threads: column ranges are handed to a thread pool (ctypes releases the GIL). The count is
``CURATE_PPL_THREADS`` when set, else the CPUs this process may use (at most 16).
"""
from __future__ import annotations

import ctypes
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engines.native import load_library
from scorers.ppl_corr._csrc import SOURCE

__all__ = ["active", "threads", "pairs_f32", "sign_pairs_f64", "MAX_MODELS"]

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "pc_pairs_f32": ([_PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _PTR, _PTR, _PTR], _I64),
    "pc_sign_pairs_f64": ([_PTR, _I64, _I64, _PTR, _PTR, _I64, _PTR, _PTR], _I64),
}
_BLOCK = 64  # PC_BLOCK in the C source: domains per SIMD block
_MIN_COLS_PER_THREAD = 1024
# Partial sums per model are int32: |sum_{i<k} (w_k - w_i)| <= N (max w - min w) < 2^31. The
# estimators' weights are within [-2N, 2N] (twice the ranks of y, or the pair-sign counts).
MAX_MODELS = 16_384

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False
_pool: ThreadPoolExecutor | None = None


def _load(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    return load_library("ppl_corr", SOURCE, _SIGNATURES, extra_flags)


def library() -> ctypes.CDLL | None:
    """The compiled library, or None when it cannot be built (warns once)."""
    global _lib, _failed
    if _lib is None and not _failed:
        with _lock:
            if _lib is None and not _failed:
                try:
                    _lib = _load()
                except (RuntimeError, OSError) as exc:
                    _failed = True
                    warnings.warn(f"perplexity-correlation kernels unavailable, using NumPy: {exc}", stacklevel=2)
    return _lib


def active() -> bool:
    """Whether the estimators use the compiled kernels (``CURATE_PPL_NATIVE=0`` turns them off)."""
    if os.environ.get("CURATE_PPL_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return library() is not None


def threads() -> int:
    env = os.environ.get("CURATE_PPL_THREADS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 16))


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
                _pool = ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 16),
                                           thread_name_prefix="ppl-corr")
    return _pool


def _p(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _rows_view(X: np.ndarray) -> tuple[np.ndarray, int]:
    """X with unit column stride (a copy only when needed) and its row stride in elements."""
    if X.dtype != np.float64 or X.strides[1] != 8 or X.strides[0] % 8 or X.strides[0] < 8 * X.shape[1]:
        X = np.ascontiguousarray(X, dtype=np.float64)
    return X, X.strides[0] // 8 if X.shape[0] > 1 else X.shape[1]


def _rows_index(rows: np.ndarray, n: int) -> np.ndarray:
    rows64 = np.ascontiguousarray(rows, dtype=np.int64)
    if rows64.shape != (n,) or (n and (rows64.min() < 0 or rows64.max() >= n)):
        raise ValueError("rows must hold N row indices")
    return rows64


def _lim_index(lim: np.ndarray, n: int) -> np.ndarray:
    lim64 = np.ascontiguousarray(lim, dtype=np.int64)
    if lim64.shape != (n,) or np.any(lim64 < 0) or np.any(lim64 > np.arange(n)):
        raise ValueError("lim[k] must be in [0, k]")
    return lim64


def _ranges(n_dom: int, n_threads: int) -> list[tuple[int, int]]:
    t = max(1, min(n_threads, n_dom // _MIN_COLS_PER_THREAD))
    blocks = -(-n_dom // _BLOCK)
    cuts = [min(n_dom, (blocks * j // t) * _BLOCK) for j in range(t + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def pairs_f32(
    X: np.ndarray,
    lim: np.ndarray,
    w: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    n_threads: int | None = None,
    lib: ctypes.CDLL | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per domain d: ``sum_k sum_{i < lim[k]} (w[k] - w[i]) [x_i < x_k]`` (weight 1 without ``w``),
    with models taken in the order ``rows`` (all of them, by default), compared in float32;
    and a flag (bool) set where some counted pair is equal in float32 (result not exact there);
    and whether every value of X was finite and non-negative (checked while copying).
    """
    lib = lib or library()
    assert lib is not None
    X, ld = _rows_view(X)
    n, n_dom = X.shape
    if n > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} models")
    lim = _lim_index(lim, n)
    w32 = None
    if w is not None:
        w64 = np.asarray(w, dtype=np.int64)
        if w64.shape != (n,) or n * int(w64.max() - w64.min()) >= 2**31:
            raise ValueError("w must hold N integers with N * (max - min) < 2^31")
        w32 = np.ascontiguousarray(w64, dtype=np.int32)
    rows64 = None if rows is None else _rows_index(rows, n)
    out = np.empty(n_dom, dtype=np.float64)
    flag = np.empty(n_dom, dtype=np.uint8)

    def run(c0: int, c1: int) -> int:
        rc = lib.pc_pairs_f32(_p(X), ld, n, _p(rows64), c0, c1, _p(lim), _p(w32), _p(out), _p(flag))
        if rc < 0:
            raise MemoryError("perplexity-correlation kernel could not allocate its buffer")
        return int(rc)

    parts = _ranges(n_dom, threads() if n_threads is None else n_threads)
    if len(parts) <= 1:
        bad = [run(*p) for p in parts]
    else:
        bad = [f.result() for f in [_executor().submit(run, a, b) for a, b in parts]]
    return out, flag.view(bool), not any(bad)


def sign_pairs_f64(
    X: np.ndarray,
    cols: np.ndarray,
    lim: np.ndarray,
    rows: np.ndarray | None = None,
    lib: ctypes.CDLL | None = None,
) -> np.ndarray:
    """Exact float64 ``sum_k sum_{i < lim[k]} sign(x_k - x_i)`` for the domains ``cols``."""
    lib = lib or library()
    assert lib is not None
    X, ld = _rows_view(X)
    n = X.shape[0]
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    if cols.size and (cols.min() < 0 or cols.max() >= X.shape[1]):
        raise IndexError("column index out of range")
    lim = _lim_index(lim, n)
    rows64 = None if rows is None else _rows_index(rows, n)
    out = np.empty(cols.size, dtype=np.float64)
    if cols.size and lib.pc_sign_pairs_f64(_p(X), ld, n, _p(rows64), _p(cols), cols.size, _p(lim), _p(out)) != 0:
        raise MemoryError("perplexity-correlation kernel could not allocate its buffer")
    return out
