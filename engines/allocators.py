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
freed), ``_RJEM_MALLOC_CONF`` (Polars' jemalloc) with immediate page return, and
``ARROW_DEFAULT_MEMORY_POOL=system``. The allocators read these once, when the library loads, so
this must run before Polars or PyArrow is imported: the ``curate`` entry point calls it first
thing, and processes it spawns inherit the environment. On the 2M-document dedup run
the fit's peak went from 498 MB to 330 MB; its time stayed within the run-to-run noise.
"""
from __future__ import annotations

import os
import sys

DEFAULTS = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
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
