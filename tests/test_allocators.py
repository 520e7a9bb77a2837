"""Allocator defaults: set only where unset, applied by the CLI before Polars loads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engines import allocators

# glibc's own count of mapped chunks (mallinfo2, glibc >= 2.33): whether a malloc of n bytes was
# mapped tells the threshold in force, whoever set it.
_PROBE = """
import ctypes
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
def mapped(n):
    before = libc.mallinfo2().hblks
    p = libc.malloc(n)
    after = libc.mallinfo2().hblks
    libc.free(ctypes.c_void_p(p))
    return after > before
"""


def _run(code: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in allocators.DEFAULTS}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_defaults_fill_only_unset_variables(monkeypatch):
    for k in allocators.DEFAULTS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")  # the user's choice wins
    set_now = allocators.apply_defaults()
    assert "ARROW_DEFAULT_MEMORY_POOL" not in set_now
    assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "mimalloc"
    assert set(set_now) == set(allocators.DEFAULTS) - {"ARROW_DEFAULT_MEMORY_POOL"}
    assert os.environ["MALLOC_ARENA_MAX"] == "2"
    assert allocators.apply_defaults() == []  # idempotent


def test_cli_applies_them_before_the_libraries_load():
    code = ("import flows.cli, os, pyarrow as pa; "
            "print(os.environ['_RJEM_MALLOC_CONF'], pa.default_memory_pool().backend_name)")
    conf, pool = _run(code)
    # Polars >= 2 puts its own settings first and ours after them; jemalloc reads options left to
    # right, so the last value of each option (ours) is the one in force.
    assert conf.endswith(allocators.DEFAULTS["_RJEM_MALLOC_CONF"])
    # Arrow names the pool it really built (it falls back to its default, with a warning, when
    # the named one is not compiled in), so this fails if the setting is not honoured.
    assert pool == allocators.DEFAULTS["ARROW_DEFAULT_MEMORY_POOL"]


def test_a_users_arrow_pool_is_kept():
    assert _run("import flows.cli, pyarrow as pa; print(pa.default_memory_pool().backend_name)",
                ARROW_DEFAULT_MEMORY_POOL="system") == ["system"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("user", [None, 256 << 10])
def test_glibc_mmap_threshold_in_force(user):
    """Whichever threshold is in force (ours, or the user's if set), glibc maps a request of that
    size and serves one 64 KB smaller from its heap: the default reaches this process too (mallopt),
    not only its children, and a user's value is not overwritten."""
    threshold = user or int(allocators.DEFAULTS["MALLOC_MMAP_THRESHOLD_"])
    env = {"MALLOC_MMAP_THRESHOLD_": str(user)} if user else {}
    code = f"import flows.cli\n{_PROBE}\nprint(mapped({threshold} - 65536), mapped({threshold}))"
    assert _run(code, **env) == ["False", "True"]
