"""Small C kernels compiled once per machine and loaded with ctypes.

A stage that needs a tight loop ships its C source as a Python string and calls
``load_library(name, source, signatures)``: the source is compiled with the system C
compiler (``$CC``, else ``cc``/``gcc``/``clang``; ``-O3 -march=native``, falling back to
``-O3``) into the cache folder (``engines.assets.cache_dir()``: ``$CURATE_CACHE``, else
``~/.cache/curate``) under a name
keyed by a hash of the source, the machine, the CPU flags and any extra compiler flags, so a
changed kernel or a different CPU gets its own build and nothing is rebuilt otherwise.
Concurrent builders (threads or processes) all end with a complete file: each compiles in a
private temporary folder and renames atomically. ctypes releases the GIL during a call, so
kernels called from several threads run in parallel.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.assets import cache_dir

__all__ = ["cache_dir", "compiler", "load_library"]

_LOCK = threading.Lock()
# keyed by the source text itself: str hashes are cached, so a hit costs a dict lookup
_LOADED: dict[tuple[str, str, tuple[str, ...]], ctypes.CDLL] = {}

#: ``{function name: (argtypes, restype)}``; restype ``None`` for ``void``.
Signatures = Mapping[str, tuple[Sequence[Any], Any]]


def compiler() -> str | None:
    """The C compiler that would be used (``$CC`` first), or None when there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@functools.cache
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(name: str, source: str, target: Path, extra_flags: Sequence[str]) -> None:
    cc = compiler()
    if not cc:
        raise RuntimeError(f"the {name} kernel is C compiled once per machine and no C compiler was found "
                           "(install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / target.name
        errors = ""
        for flags in (["-O3", "-march=native"], ["-O3"]):
            cmd = [cc, *flags, *extra_flags, "-fPIC", "-shared", "-o", str(out), str(src)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as exc:  # $CC names a program that is not there
                raise RuntimeError(f"cannot run the C compiler {cc!r}: {exc}") from exc
            if r.returncode == 0:
                os.replace(out, target)  # atomic: concurrent builders all end with a complete file
                return
            errors = r.stderr
        raise RuntimeError(f"compiling the {name} kernel failed:\n{errors[-2000:]}")


def load_library(name: str, source: str, signatures: Signatures, extra_flags: Sequence[str] = ()) -> ctypes.CDLL:
    """The compiled library of ``source`` (built on first use, then loaded from the cache).

    ``signatures`` sets each function's ctypes ``argtypes`` and ``restype``. Raises
    ``RuntimeError`` when there is no C compiler or the source does not compile. Each
    (name, source, flags) is loaded once per process; later calls cost a dict lookup.
    """
    memo = (name, source, tuple(extra_flags))
    loaded = _LOADED.get(memo)
    if loaded is not None:
        return loaded
    with _LOCK:
        loaded = _LOADED.get(memo)
        if loaded is None:
            flags = "".join(extra_flags)
            key = hashlib.sha256((source + platform.machine() + _cpu_flags() + flags).encode()).hexdigest()[:16]
            target = cache_dir() / f"{name}-{key}.so"
            if not target.exists():
                _build(name, source, target, extra_flags)
            loaded = ctypes.CDLL(str(target))
            for fn_name, (argtypes, restype) in signatures.items():
                fn = getattr(loaded, fn_name)
                fn.argtypes = list(argtypes)
                fn.restype = restype
            _LOADED[memo] = loaded
    return loaded
