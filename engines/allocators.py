"""Allocator settings that keep long streaming runs from hoarding freed memory.

Measured on the 2,000,000-document dedup benchmark (docs/dedup.md): with the libraries' own
defaults a fit process kept ~250 MB more than it used, because

* glibc gives each thread its own heap arena (up to 8 x cores) and returns little of it, and
  after a large buffer is freed it raises its mmap threshold (up to 32 MB), so the next
  batch-sized buffers (a few MB of text) come from the heap, which fragments and does not
  shrink;
* Polars' bundled jemalloc and Arrow's jemalloc pool keep freed pages for seconds before giving
  them back, and a streaming fit frees and re-allocates batch-sized buffers all the time.

``apply_defaults()`` sets, only where the user has not set them already: ``MALLOC_ARENA_MAX=2``,
``MALLOC_MMAP_THRESHOLD_=1048576`` (buffers of 1 MB and more are mapped, and unmapped when
freed), ``_RJEM_MALLOC_CONF`` (Polars' jemalloc) with immediate page return, and Arrow's pool:
on x86-64 Linux its bundled jemalloc (``ARROW_DEFAULT_MEMORY_POOL=jemalloc``) with
``JE_ARROW_MALLOC_CONF=dirty_decay_ms:250,muzzy_decay_ms:0,narenas:1`` (freed pages are reused
for 250 ms, then given back with MADV_DONTNEED by jemalloc's background thread; one arena, so
pages freed by one Arrow thread serve the next), ``system`` elsewhere (a PyArrow build may lack
jemalloc). The allocators read these once, when the library loads, so this must run before
Polars or PyArrow is imported: the ``curate`` entry point calls it first thing, and processes it
spawns inherit the environment. On the 2M-document dedup run the glibc settings took the fit's
peak from 498 MB to 330 MB; its time stayed within the run-to-run noise.

Arrow's pool, measured on the 200,000-document dedup user path (docs/dedup.md, session 10; AMD
EPYC, AVX2, 2 shared cores): against the ``system`` pool the release took 0.46 M instead of 0.80 M
minor page faults (Arrow's Parquet decoder grows text buffers, and the 1 MB mmap threshold maps and
unmaps each one) and ~0.9 CPU s less of ~8.7; the three MinHash stages 0.9 M faults instead of 1.25
M, CPU within the noise (-0.5 s of ~14); peak RSS within 20 MB. Arrow's own jemalloc settings (1 s
decay, 8 arenas) or a 100-250 ms decay over 8 arenas cut the faults more, but a report's peak then
grew with the corpus (``tests/test_report_memory.py``: 57-78 MB against its 51.4 MB bound; ``system``
10-26 MB, this setting -12 to 41 MB).
"""
from __future__ import annotations

import os
import platform
import sys

_JEMALLOC_WHEEL = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")

DEFAULTS = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    # PyArrow's x86-64 Linux wheels carry Arrow's jemalloc (other builds may not, and Arrow would warn
    # at every start); the variable reaches only that jemalloc (its symbols are prefixed je_arrow_), not
    # Polars' or glibc's. muzzy 0: skip MADV_FREE, whose pages stay in RSS until the kernel needs them.
    "ARROW_DEFAULT_MEMORY_POOL": "jemalloc" if _JEMALLOC_WHEEL else "system",
    "JE_ARROW_MALLOC_CONF": "dirty_decay_ms:250,muzzy_decay_ms:0,narenas:1",
}


def apply_defaults() -> list[str]:
    """Set the allocator variables that are unset; returns the names it set. Variables read by a
    library that is already imported take effect only in child processes."""
    set_now = [k for k in DEFAULTS if k not in os.environ]
    for k in set_now:
        os.environ[k] = DEFAULTS[k]
    # glibc reads its variables at start-up; mallopt applies them to this process too.
    if "MALLOC_ARENA_MAX" in set_now:
        _mallopt(-8, int(DEFAULTS["MALLOC_ARENA_MAX"]))  # M_ARENA_MAX
    if "MALLOC_MMAP_THRESHOLD_" in set_now:
        _mallopt(-3, int(DEFAULTS["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
    return set_now


def _mallopt(param: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):
        pass
