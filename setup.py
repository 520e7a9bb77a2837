"""Build configuration of curate's compiled kernels (everything else is in pyproject.toml).

Three CPython extensions, built by ``pip install .`` / ``pip install -e .`` / a wheel build:

- ``filters.minhash._minhash`` from ``filters/minhash/csrc/minhash.c``
- ``scorers.ppl_corr._pplcorr`` from ``scorers/ppl_corr/csrc/pplcorr.c``
- ``filters.heuristics._chunks`` from ``filters/heuristics/csrc/chunks.c``
- ``readers._ingest`` from ``readers/csrc/ingest.c`` (JSON Lines line scan with a UTF-8 check,
  scalar and AVX2; URL hosts; JSON string literals for ``meta``; document ids with SHA-NI)

Both are compiled for the baseline ISA of the target (never ``-march=native``): the AVX2 and
AVX-512 versions of their hot loops are compiled into the same binary with target pragmas and
chosen at import from the CPU's flags, so one wheel is fast on every x86-64 machine.
``-ffp-contract=off`` keeps every path's floating-point results bit-identical.

The extensions are optional: where they cannot be built (no C compiler) the install still
succeeds, MinHash uses its NumPy fallback (same results, slower, with a warning that says how to
get the fast path) and the perplexity-correlation estimators their NumPy path.
``CURATE_NO_EXTENSIONS=1`` skips them on purpose (tests of the fallback install).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildKernels(build_ext):
    """build_ext that says in one line, per extension, whether the compiled kernels were built."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # optional=True makes setuptools skip it; say what that means
            print(f"curate: could not compile {ext.name} ({type(exc).__name__}: {exc}); the package still "
                  "works without it (NumPy fallbacks, slower). For the fast kernels install a C compiler "
                  "(e.g. apt-get install gcc) and reinstall.", file=sys.stderr)
            raise
        print(f"curate: built compiled kernels {ext.name}", file=sys.stderr)

flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-std=gnu11"]
common = dict(include_dirs=["engines/csrc"], extra_compile_args=flags, optional=True,
              depends=["engines/csrc/curate_native.h"])

extensions = [
    Extension("filters.minhash._minhash", ["filters/minhash/csrc/minhash.c"],
              **{**common, "depends": [*common["depends"], "filters/minhash/csrc/lower_table.h"]}),
    Extension("scorers.ppl_corr._pplcorr", ["scorers/ppl_corr/csrc/pplcorr.c"], **common),
    Extension("filters.heuristics._chunks", ["filters/heuristics/csrc/chunks.c"], **common),
    Extension("readers._ingest", ["readers/csrc/ingest.c"], **common),
]

setup(ext_modules=[] if os.environ.get("CURATE_NO_EXTENSIONS") == "1" else extensions,
      cmdclass={"build_ext": BuildKernels})
