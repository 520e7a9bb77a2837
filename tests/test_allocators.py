"""Allocator defaults: set only where unset, applied by the CLI before Polars and PyArrow load, and
in force in a fresh process (checked by what the allocators do, not by reading the variables back)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engines import allocators


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


def _fresh(code: str, **extra: str) -> subprocess.CompletedProcess:
    """``code`` after ``import flows.cli`` in a new interpreter whose environment lacks the defaults."""
    env = {k: v for k, v in os.environ.items() if k not in allocators.DEFAULTS} | extra
    return subprocess.run([sys.executable, "-c", "import flows.cli\n" + code], env=env, capture_output=True,
                          text=True, check=True)


def test_cli_applies_them_before_the_libraries_load():
    out = _fresh("import os, pyarrow as pa; print(os.environ['_RJEM_MALLOC_CONF'], pa.default_memory_pool().backend_name)")
    conf, pool = out.stdout.split()
    # Polars >= 2 puts its own settings first and ours after them; jemalloc reads options left to
    # right, so the last value of each option (ours) is the one in force.
    assert conf.endswith(allocators.DEFAULTS["_RJEM_MALLOC_CONF"])
    assert pool == allocators.DEFAULTS["ARROW_DEFAULT_MEMORY_POOL"]
    assert "<jemalloc>" not in out.stderr  # jemalloc names every conf pair it could not parse there


# Page-faults and RSS of a fresh process that allocates, touches and frees 2 MB Arrow buffers: with
# the default pool the pages of a freed buffer serve the next one (a few faults in all, not one per
# page per buffer), and they are given back to the system once the process stops freeing (the decay).
_REUSE = """
import json, resource, time, pyarrow as pa
def rss_kb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() // 1024
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
pool = pa.default_memory_pool()
base, f0 = rss_kb(), faults()
for _ in range(50):
    buf = pa.allocate_buffer(2 << 20, memory_pool=pool)
    view = memoryview(buf).cast("B")
    view[::4096] = bytes(len(view[::4096]))
    del view, buf
reuse_faults = faults() - f0
held = [pa.allocate_buffer(2 << 20, memory_pool=pool) for _ in range(32)]
for buf in held:
    view = memoryview(buf).cast("B")
    view[::4096] = bytes(len(view[::4096]))
    del view
del buf
peak = rss_kb()
held.clear()
t0 = time.monotonic()
while rss_kb() > base + 16 * 1024 and time.monotonic() - t0 < 10:
    time.sleep(0.05)
print(json.dumps({"pool": pool.backend_name, "faults": reuse_faults, "grew_kb": peak - base,
                  "returned_s": time.monotonic() - t0, "left_kb": rss_kb() - base}))
"""


@pytest.mark.skipif(not allocators._JEMALLOC_WHEEL, reason="Arrow's jemalloc pool is the default on x86-64 Linux only")
def test_the_default_arrow_pool_reuses_freed_pages_and_gives_them_back():
    new = json.loads(_fresh(_REUSE).stdout)
    old = json.loads(_fresh(_REUSE, ARROW_DEFAULT_MEMORY_POOL="system").stdout)  # the previous default, as a control
    pages = 50 * (2 << 20) // 4096
    # The control maps each 2 MB buffer anew (1 MB mmap threshold): a fault per page per buffer.
    assert old["pool"] == "system" and old["faults"] > 0.9 * pages
    assert new["pool"] == "jemalloc" and new["faults"] < 0.2 * pages
    # Bounded: the 64 MB it held in 2 MB buffers went back to the system after the 250 ms decay (jemalloc's background
    # thread; 10 s allowed for a busy machine), not at exit.
    assert new["grew_kb"] > 60 * 1024 and new["left_kb"] < 16 * 1024, new
