"""Perplexity-correlation estimators: ours (scorers.ppl_corr) vs the reference package.

Reference: PyPI ``perplexity-correlations`` (Thrush et al., 2024), a test/benchmark-only
dependency. Data: N models x D domains of uniform random bits-per-byte and uniform
random benchmark errors (same process for both implementations).

    .venv/bin/python benchmarks/perplexity_correlations.py              # D = 20,000 and 100,000
    .venv/bin/python benchmarks/perplexity_correlations.py --quick      # D = 2,000
    CURATE_SIMD=avx2 .venv/bin/python benchmarks/perplexity_correlations.py   # the AVX2 path
    .venv/bin/python benchmarks/perplexity_correlations.py --paths all  # every SIMD path in turn
    .venv/bin/python benchmarks/perplexity_correlations.py --algorithms --domains 4000  # cost model

The header prints the CPU model, its SIMD flags, the kernel path in use (``CURATE_SIMD`` forces a
narrower one), NumPy's own SIMD targets (the reference runs on them) and the load average.

For D above ``--ref-max-d`` (default 20,000) the reference is timed on the first
``--ref-max-d`` columns and its time scaled linearly in D (all its estimators are
column-separable, so time is linear in D); such rows are marked "extrap".

Ours is timed on one thread (``CURATE_PPL_THREADS=1``) and on the default thread count (the CPUs
this process may use, at most 16, or ``--threads``); the reference is single-threaded NumPy.
Times are the best of ``--repeats`` runs of wall-clock time; ``--clock cpu`` uses the process's
CPU time instead (robust on a machine shared with other work, but it sums the threads, so only
the one-thread column means anything then). ``product`` is bound by memory bandwidth: the note
gives the GB/s at which ours reads X.
"""

from __future__ import annotations

import argparse
import contextlib
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

from engines import native  # noqa: E402
from scorers.ppl_corr import estimators as ours  # noqa: E402
from scorers.ppl_corr import kernels  # noqa: E402

NAMES = ["spearmanr", "sign_cdf", "sign_sign", "sign", "product"]
CLOCK = time.perf_counter


def _best(repeats: int, fn, *args, **kwargs) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = CLOCK()
        fn(*args, **kwargs)
        best = min(best, CLOCK() - t0)
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


def numpy_simd() -> str:
    """The SIMD targets NumPy dispatches to here (what the reference package runs on)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__  # type: ignore[attr-defined]
    except ImportError:
        return "?"
    on = [f for f in ("AVX2", "AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR") if __cpu_features__.get(f)]
    return ", ".join(on) + (f" (dispatch targets: {len(__cpu_dispatch__)})" if __cpu_dispatch__ else "")


def header(threads: int) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(native.describe())
    print(f"NumPy {np.__version__} SIMD: {numpy_simd()}; os.cpu_count() = {os.cpu_count()}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; clock: "
          f"{'wall' if CLOCK is time.perf_counter else 'process CPU'}; threads: 1 and {threads}")


def run_estimators(args: argparse.Namespace, ref, threads: int) -> None:
    backend = (f"compiled kernels ({native.active_path()}, rank sums by "
               f"{kernels.choose_algorithm(args.models)})" if kernels.active() else "NumPy (no compiled kernels)")
    print(f"N = {args.models} models; best of {args.repeats} runs; times in seconds; ours: {backend}; "
          f"reference: single-threaded NumPy")
    print(f"{'D':>8} {'estimator':<10} {'ours 1t':>9} {f'ours {threads}t':>9} {'reference':>10} "
          f"{'speed-up 1t':>11} {f'{threads}t':>7}  note")
    n = args.models
    dims = args.domains or ([2_000] if args.quick else [20_000, 100_000])
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
                note += f"; reads X at {X.nbytes / min(t_1, t_n) / 1e9:.0f} GB/s"
            if d_ref < d:
                note += f"; ref timed on {d_ref} cols, extrap x{d / d_ref:g}"
            print(f"{d:>8} {name:<10} {t_1:>9.4f} {t_n:>9.4f} {t_ref:>10.4f} {t_ref / t_1:>10.1f}x "
                  f"{t_ref / t_n:>6.1f}x  {note}", flush=True)


def run_algorithms(args: argparse.Namespace) -> None:
    """ns per domain of each rank-sum algorithm for a range of N on the current path (one thread):
    the measurements behind ``kernels._COST``."""
    d = (args.domains or [4_000])[0]
    print(f"rank sums, one thread, D = {d}, path {native.active_path()}: ns per domain "
          "(and per pair / per compare-exchange); 'near' = share of domains the packed keys flag")
    for n in (4, 8, 16, 24, 32, 48, 64, 90, 128, 200, 400):
        rng = np.random.default_rng(1)
        X = rng.random((n, d))
        w = rng.integers(-2 * n, 2 * n, size=n)
        cmp = kernels._network_size(n)
        row = [f"N={n:4d} ({cmp} cmp)"]
        for algo in kernels.ALGORITHMS:
            t = _best(args.repeats, kernels.rank_sums, X, w, 1, algo) / d * 1e9
            unit = n * (n - 1) / 2 if algo == "pairs" else cmp
            row.append(f"{algo} {t:7.1f} ({t / unit:.3f})")
        flag = np.empty(d, np.uint8)
        kernels.ext().rank_sums_keys(X, kernels._weights32(w, n), 0, d, np.empty(d), flag)
        near = float(flag.mean())
        row.append(f"near {near:.3f}; chosen: {kernels.choose_algorithm(n)}")
        print("  ".join(row), flush=True)


def main() -> None:
    global CLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (D = 2,000)")
    ap.add_argument("--models", type=int, default=90)
    ap.add_argument("--domains", type=int, nargs="*", default=None)
    ap.add_argument("--ref-max-d", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="default: the CPUs this process may use (<= 16)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--paths", default="", help="'all' (every SIMD path this CPU has, in turn) or a comma list")
    ap.add_argument("--algorithms", action="store_true", help="time each rank-sum algorithm per N instead")
    args = ap.parse_args()
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    try:
        from perplexity_correlations import estimation as ref
    except ImportError as exc:
        raise SystemExit("pip install perplexity-correlations (reference package) first") from exc
    threads = args.threads or kernels.threads()
    paths = list(native.paths()) if args.paths == "all" else [p for p in args.paths.split(",") if p]
    for path in paths or [None]:
        with native.use_path(path) if path else contextlib.nullcontext():
            header(threads)
            if args.algorithms:
                run_algorithms(args)
            else:
                run_estimators(args, ref, threads)
            print()


if __name__ == "__main__":
    main()
