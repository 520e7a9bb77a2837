"""Allocator settings that keep long streaming runs from hoarding freed memory without paying for it
in page faults.

Measured on the 2,000,000-document dedup benchmark (docs/dedup.md): with the libraries' own
defaults a fit process kept ~250 MB more than it used, because

* glibc gives each thread its own heap arena (up to 8 x cores) and returns little of it, and
  after a large buffer is freed it raises its mmap threshold (up to 32 MB), so the next
  batch-sized buffers (a few MB of text) come from the heap, which fragments and does not
  shrink;
* Polars' bundled jemalloc keeps freed pages for seconds before giving them back, and a
  streaming fit frees and re-allocates batch-sized buffers all the time.

``apply_defaults()`` sets, only where the user has not set them already: ``MALLOC_ARENA_MAX=2``,
``MALLOC_MMAP_THRESHOLD_=1048576`` (glibc buffers of 1 MB and more are mapped, and unmapped when
freed), ``_RJEM_MALLOC_CONF`` (Polars' jemalloc) with immediate page return, and
``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` on Linux (``system`` elsewhere). The allocators read these
once, when the library loads, so this must run before Polars or PyArrow is imported: the
``curate`` entry point calls it first thing, and processes it spawns inherit the environment.

Arrow's pool is where most of the page faults came from: with the system pool (glibc) and the
1 MB threshold, every text buffer the Parquet decoder grows is mapped in fresh, zeroed pages and
unmapped when the batch is done, so ~15% of the MinHash stages' CPU went to the kernel's page
faults (56% of the faults from that decoder). Arrow's own jemalloc (a copy apart from Polars',
configured by ``JE_ARROW_MALLOC_CONF``; Arrow's defaults: pages given back after 1 s by a
background thread) re-uses those pages, while NumPy and the rest keep glibc's 1 MB threshold,
which is what bounds the fit's peak. Measured on an AMD EPYC (AVX2, no AVX-512), 2 cores shared
with other work (load 7-25, so CPU seconds, not wall clock), system pool -> Arrow's jemalloc, both
with the 1 MB threshold (docs/dedup.md, "Session 9: the allocator settings at 2,000,000 documents"):

* 200,000-document user path (``benchmarks.dedup.user_path --prefect-server running``),
  alternating: ``curate run`` 32.3, 29.8 -> 27.0, 27.7, 26.3 CPU s; largest process 572-578 ->
  588-607 MB;
* the three stages alone on 200,000 documents (``benchmarks.dedup.run_curate --workers 1``):
  15.0-16.7 -> 13.4-17.0 CPU s (means 15.5 -> 14.5), sys 4.6-5.3 -> 3.3-4.2, page faults
  1.24 M -> 0.69-0.75 M, peak 327-337 -> 354-363 MB;
* 2,000,000 documents (``benchmarks.dedup.run --docs 2000000 --tools curate --no-truth``): peak
  424 -> 439 MB (the re-read of the candidate documents' shingle sets), 150.7 -> 146.8 CPU s
  (the second run under twice the load), the same 530,964 documents removed. From 200,000 to
  2,000,000 documents the peak grows by ~95 MB with the system pool and ~80 MB with jemalloc.

A larger glibc threshold saves as much CPU on 200,000 documents (16 MB: 24.6, 28.4 CPU s on the
user path) but lets the heap keep freed batch buffers, and that grows with the corpus: 16 MB
peaks at 422-437 MB on 200,000 documents and 708 MB on 2,000,000, so the threshold stays 1 MB.
"""
from __future__ import annotations

import os
import sys

DEFAULTS = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    # Linux wheels of PyArrow are built with jemalloc; elsewhere it may be missing.
    "ARROW_DEFAULT_MEMORY_POOL": "jemalloc" if sys.platform.startswith("linux") else "system",
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
