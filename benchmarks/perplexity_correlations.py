"""Perplexity-correlation estimators: ours (scorers.ppl_corr) vs the reference package.

Reference: PyPI ``perplexity-correlations`` (Thrush et al., 2024), a test/benchmark-only
dependency. Data: N models x D domains of uniform random bits-per-byte and uniform
random benchmark errors (same process for both implementations).

    .venv/bin/python benchmarks/perplexity_correlations.py           # D = 20,000 and 100,000
    .venv/bin/python benchmarks/perplexity_correlations.py --quick   # D = 2,000

For D above ``--ref-max-d`` (default 20,000) the reference is timed on the first
``--ref-max-d`` columns and its time scaled linearly in D (all its estimators are
column-separable, so time is linear in D); such rows are marked "extrap".

Ours is timed twice: on one thread (``CURATE_PPL_THREADS=1``) and on the default thread
count (the CPUs this process may use, at most 16, or ``--threads``); the reference is
single-threaded NumPy. ``spearmanr``, ``sign_cdf`` and ``sign_sign`` run the compiled
kernels (scorers/ppl_corr/kernels.py) unless no C compiler is found or
``CURATE_PPL_NATIVE=0``; the header says which. ``sign`` and ``product`` are one
matrix-vector product over X (NumPy/BLAS): ``product`` is bound by memory bandwidth (X is
read once; the note gives the GB/s reached), so no implementation can be 10x faster than a
reference that reads X about twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

# Run as a script, this file's folder is sys.path[0] and this file's own name would
# shadow the reference package; swap that entry for the repository root.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import numpy as np  # noqa: E402

from scorers.ppl_corr import estimators as ours  # noqa: E402
from scorers.ppl_corr import kernels  # noqa: E402

NAMES = ["spearmanr", "sign_cdf", "sign_sign", "sign", "product"]


def _best(repeats: int, fn, *args, **kwargs) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def _timed(threads: int, repeats: int, fn, *args, **kwargs) -> float:
    old = os.environ.get("CURATE_PPL_THREADS")
    os.environ["CURATE_PPL_THREADS"] = str(threads)
    try:
        return _best(repeats, fn, *args, **kwargs)
    finally:
        if old is None:
            del os.environ["CURATE_PPL_THREADS"]
        else:
            os.environ["CURATE_PPL_THREADS"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (D = 2,000)")
    ap.add_argument("--models", type=int, default=90)
    ap.add_argument("--domains", type=int, nargs="*", default=None)
    ap.add_argument("--ref-max-d", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use (<= 16)")
    args = ap.parse_args()
    try:
        from perplexity_correlations import estimation as ref
    except ImportError as exc:
        raise SystemExit("pip install perplexity-correlations (reference package) first") from exc

    dims = args.domains or ([2_000] if args.quick else [20_000, 100_000])
    n = args.models
    threads = args.threads or kernels.threads()
    backend = "compiled kernels" if kernels.active() else "NumPy (no compiled kernels)"
    print(f"N = {n} models; best of {args.repeats} runs; times in seconds; ours: {backend}; "
          f"reference: single-threaded NumPy; os.cpu_count() = {os.cpu_count()}")
    print(f"{'D':>8} {'estimator':<10} {'ours 1t':>9} {f'ours {threads}t':>9} {'reference':>10} "
          f"{'speed-up 1t':>11} {f'{threads}t':>7}  note")
    for d in dims:
        rng = np.random.default_rng(0)
        X = rng.random((n, d))
        y = rng.random(n)
        d_ref = min(d, args.ref_max_d)
        Xr = np.ascontiguousarray(X[:, :d_ref])
        for name in NAMES:
            ours_fn = getattr(ours, name)
            ref_fn = getattr(ref, name)
            mine = ours_fn(X, y, kind="error")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = ref_fn(Xr, y)
                t_ref = _best(args.repeats, ref_fn, Xr, y) * (d / d_ref)
            err = float(np.max(np.abs(mine[:d_ref] - theirs)))
            t_1 = _timed(1, args.repeats, ours_fn, X, y, kind="error")
            t_n = _timed(threads, args.repeats, ours_fn, X, y, kind="error")
            note = f"max|diff|={err:.1e}"
            if name == "product":
                note += f"; memory-bound: reads X once at {X.nbytes / min(t_1, t_n) / 1e9:.0f} GB/s"
            if d_ref < d:
                note += f"; ref timed on {d_ref} cols, extrap x{d / d_ref:g}"
            print(f"{d:>8} {name:<10} {t_1:>9.4f} {t_n:>9.4f} {t_ref:>10.4f} {t_ref / t_1:>10.1f}x "
                  f"{t_ref / t_n:>6.1f}x  {note}")


if __name__ == "__main__":
    main()
