"""The compiled kernels: loading the extensions built at install time and choosing their SIMD path.

The C kernels live in real source files (``filters/minhash/csrc/``, ``scorers/ppl_corr/csrc/``,
``engines/csrc/``) and are compiled by ``pip install`` (``setup.py``) into CPython extensions;
nothing compiles at run time. Each extension holds several versions of its hot loops, one per
SIMD path, and picks the widest the CPU supports when it is imported:

============  ==========================================================================
path          used on
============  ==========================================================================
``scalar``    any x86-64 CPU (the baseline ISA, SSE2), or forced
``avx2``      x86-64 with AVX2 + BMI2 (Haswell, Zen and later)
``avx512``    x86-64 with AVX-512 F/DQ/BW/VL (Skylake-X, Ice Lake, Zen 4 and later)
``neon``      aarch64 (NEON is part of its baseline)
============  ==========================================================================

``CURATE_SIMD=scalar|avx2|avx512`` forces a narrower path (for tests and benchmarks; a path
the CPU lacks falls back to the widest it has, with a warning). Every path computes the same
bits. ``CURATE_NATIVE=0`` turns the compiled kernels off altogether: MinHash then runs its NumPy
fallback and the perplexity-correlation estimators their NumPy path (same results, slower).

An extension that is missing (no C compiler at install time) or stale (built from older sources
than the Python code expects, after a ``git pull`` without reinstalling) is reported as
unavailable, and its callers fall back to NumPy with a warning that says how to rebuild.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["SIMD_ENV", "REBUILD_HINT", "load", "enabled", "paths", "active_path", "use_path", "cpu_info"]

SIMD_ENV = "CURATE_SIMD"
NATIVE_ENV = "CURATE_NATIVE"
#: What a user runs to get the compiled kernels (printed in fallback warnings).
REBUILD_HINT = ("install a C compiler (gcc or clang; e.g. apt-get install gcc) and reinstall curate: "
                "`pip install --force-reinstall --no-deps .` (`pip install -e .` in a checkout)")

_LOADED: dict[str, ModuleType] = {}
_MISSING: dict[str, str] = {}
#: The loaded extensions that have SIMD paths (``paths``/``set_path``/``path``).
_DISPATCHED: dict[str, ModuleType] = {}


def enabled() -> bool:
    """False when ``CURATE_NATIVE`` is 0/false/no/off (compiled kernels turned off)."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def load(module: str, abi: int) -> ModuleType | None:
    """The extension ``module`` (e.g. ``"filters.minhash._minhash"``) set to the SIMD path chosen
    by ``CURATE_SIMD`` (else the CPU's widest), or None when it is not built, is stale (its ``ABI``
    differs from ``abi``) or ``CURATE_NATIVE=0``. The reason is kept for ``missing_reason``."""
    if not enabled():
        return None
    mod = _LOADED.get(module)
    if mod is not None:
        return mod
    if module in _MISSING:
        return None
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        _MISSING[module] = f"the extension {module} is not built ({exc})"
        return None
    if getattr(mod, "ABI", None) != abi:
        _MISSING[module] = (f"the extension {module} is stale (ABI {getattr(mod, 'ABI', None)}, expected {abi}): "
                            "it was built from older sources")
        return None
    if hasattr(mod, "set_path"):  # an extension without SIMD versions has one path
        _apply_env_path(mod)
        _DISPATCHED[module] = mod
    _LOADED[module] = mod
    return mod


def missing_reason(module: str) -> str:
    """Why ``load(module)`` returned None (empty when it did not)."""
    if not enabled():
        return f"{NATIVE_ENV}=0 turns the compiled kernels off"
    return _MISSING.get(module, "")


def _apply_env_path(mod: ModuleType) -> None:
    want = os.environ.get(SIMD_ENV, "").strip().lower()
    if not want:
        return
    have = mod.paths()
    if want not in ("scalar", "neon", "avx2", "avx512"):
        warnings.warn(f"{SIMD_ENV}={want!r} is not a SIMD path (scalar, avx2, avx512); using {have[-1]}", stacklevel=3)
        return
    if want not in have:
        warnings.warn(f"{SIMD_ENV}={want} is not supported by this CPU (it has {', '.join(have)}); using {have[-1]}",
                      stacklevel=3)
        return
    mod.set_path(want)


def _any() -> ModuleType | None:
    if _DISPATCHED:
        return next(iter(_DISPATCHED.values()))
    # each kernel module loads its extension on first use
    for name in ("filters.minhash.kernels", "scorers.ppl_corr.kernels"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name).ext()
    return next(iter(_DISPATCHED.values()), None)


def paths() -> tuple[str, ...]:
    """The SIMD paths this CPU supports, narrowest first (empty without compiled kernels)."""
    mod = _any()
    return tuple(mod.paths()) if mod is not None else ()


def active_path() -> str:
    """The SIMD path the compiled kernels use now, or ``"numpy"`` without them."""
    mod = _any()
    return str(mod.path()) if mod is not None else "numpy"


@contextlib.contextmanager
def use_path(path: str) -> Iterator[None]:
    """Run the block with every loaded extension on ``path`` (tests and benchmarks); raises
    ValueError when the CPU lacks it. Not for concurrent use: the path is process-wide."""
    mods = list(_DISPATCHED.values()) or [m for m in [_any()] if m is not None]
    old = [m.path() for m in mods]
    try:
        for m in mods:
            m.set_path(path)
        yield
    finally:
        for m, p in zip(mods, old):
            m.set_path(p)


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU model, its SIMD flags, the paths and the one in use (for benchmark headers)."""
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    simd = sorted(f for f in flags if f in ("avx2", "fma", "bmi2", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                                           "asimd", "neon", "sve"))
    return {"model": model, "machine": platform.machine(), "simd_flags": simd}


def describe() -> str:
    """One line for benchmark output: CPU model, SIMD flags, supported paths and the path in use."""
    info = cpu_info()
    return (f"CPU: {info['model']} ({info['machine']}); SIMD flags: {' '.join(info['simd_flags']) or '-'}; "
            f"kernel paths: {', '.join(paths()) or 'none (not built)'}; in use: {active_path()}"
            + (f" (forced by {SIMD_ENV}={os.environ[SIMD_ENV]})" if os.environ.get(SIMD_ENV) else ""))
