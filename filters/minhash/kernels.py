"""Compiled kernels of MinHash deduplication, their NumPy fallback, and the pure functions around them.

Everything that runs per byte, per word or per shingle is C (``filters/minhash/csrc/minhash.c``),
compiled when the package is installed into the extension ``filters.minhash._minhash``
(``setup.py``; see ``engines.native`` for the SIMD paths and ``CURATE_SIMD``). Its functions take
NumPy arrays (checked for dtype, size and bounds), release the GIL, and hold no state, so threads
run them in parallel. A shared library costs a process about nothing, where a JIT (Numba was
tried first) cost ~200 MB of private memory per process.

Without the extension (no C compiler at install time, or ``CURATE_NATIVE=0``) every function here
runs the vectorised NumPy version in ``filters.minhash.numpy_kernels`` instead: the same results
bit for bit (tests/minhash checks both against each other), several times slower; a warning says
so once per process and how to get the compiled kernels.

Nothing here depends on Polars' or Arrow's own hash functions: every hash is defined below in
a few lines of integer arithmetic, so a signature persisted today is reproduced bit for bit by
a later version of any library (tests/minhash checks the C against a plain-Python version).

Definitions (see docs/dedup.md):

- **Words.** The text is lower-cased (Unicode, as Polars' ``str.to_lowercase``: in the compiled
  word hasher with ``lower=True``, from the tables of ``filters.minhash.lower_table``), then
  cut into words at every character that is not a letter, mark or digit: ASCII punctuation,
  symbols, spaces and controls, plus the fixed non-ASCII punctuation/symbol/space ranges of
  ``_SEPARATOR_RANGES``. With ``fold_digits`` every ASCII digit becomes ``0``.
- **Word hash.** FNV-1a 64 over the word's UTF-8 bytes, then MurmurHash3's 64-bit finaliser.
- **Shingle hash.** For the ``n`` words starting at word ``i``:
  ``fmix64(sum_k w[i+k] * K^(n-1-k) mod 2^64)``, with ``K = 0x9E3779B97F4A7C15``. A document
  with fewer than ``n`` words (but at least one) has one shingle made of all its words.
- **Permutations.** ``pi_j(x) = (a_j * x + b_j) mod 2^64`` with ``a_j`` odd, so each is a
  bijection of the 64-bit hash space (an affine permutation, like datasketch's
  ``(a x + b) mod (2^61 - 1)``). ``a_j, b_j`` are successive outputs of SplitMix64 seeded with
  ``seed``. The signature is ``m_j = min_x pi_j(x)`` over the distinct shingles.
- **Band hash.** For band ``t`` (rows ``t*r .. t*r+r-1``): ``h = fmix64(t + 1)``, then for each
  row ``h = fmix64(h * K + m_row)``. The band index is part of the hash, so one 64-bit key space
  holds every band's buckets.
- **Stored shingles** (for exact verification): the ``k`` smallest distinct values of
  ``shingle_hash >> 32`` (uint32). For documents with at most ``k`` distinct shingles this is
  the whole set; longer documents keep a bottom-k sample.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from engines import native
from filters.minhash import numpy_kernels as nk

MASK64 = (1 << 64) - 1
K_POLY = 0x9E3779B97F4A7C15
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
NO_VALUE = np.iinfo(np.uint64).max

# Non-ASCII code points that separate words (inclusive ranges): Latin-1 punctuation and
# symbols (keeping the letters ª µ º), × and ÷, general punctuation and spaces, currency,
# arrows, mathematical and technical symbols, box drawing and dingbats, supplemental
# punctuation, CJK symbols and punctuation, vertical/small/full-width forms, the BOM,
# a few script-specific full stops and commas, and the emoji/pictograph planes.
_SEPARATOR_RANGES = np.array([
    (0x80, 0xA9), (0xAB, 0xB4), (0xB6, 0xB9), (0xBB, 0xBF), (0xD7, 0xD7), (0xF7, 0xF7),
    (0x37E, 0x37E), (0x387, 0x387), (0x55A, 0x55F), (0x589, 0x58A), (0x5BE, 0x5BE), (0x5C0, 0x5C0),
    (0x5C3, 0x5C3), (0x5C6, 0x5C6), (0x5F3, 0x5F4), (0x60C, 0x60D), (0x61B, 0x61B), (0x61D, 0x61F),
    (0x66A, 0x66D), (0x6D4, 0x6D4), (0x964, 0x965), (0x970, 0x970), (0xE4F, 0xE4F), (0xE5A, 0xE5B),
    (0x104A, 0x104F), (0x10FB, 0x10FB), (0x1360, 0x1368), (0x166E, 0x166E), (0x1680, 0x1680),
    (0x17D4, 0x17D6), (0x1800, 0x180A), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x2101),
    (0x2103, 0x2106), (0x2108, 0x2109), (0x2116, 0x2118), (0x211E, 0x2123), (0x2125, 0x2125),
    (0x2127, 0x2127), (0x2129, 0x2129), (0x212E, 0x212E), (0x2190, 0x2BFF), (0x2E00, 0x2E7F),
    (0x3000, 0x3004), (0x3008, 0x3020), (0x3030, 0x3030), (0x303D, 0x303F), (0x30FB, 0x30FB),
    (0xFD3E, 0xFD3F), (0xFE10, 0xFE19), (0xFE30, 0xFE6B), (0xFEFF, 0xFEFF), (0xFF01, 0xFF0F),
    (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65), (0xFFE0, 0xFFEE), (0xFFF9, 0xFFFD),
    (0x1F000, 0x1FAFF),
], dtype=np.int64)
SEP_LO = np.ascontiguousarray(_SEPARATOR_RANGES[:, 0])
SEP_HI = np.ascontiguousarray(_SEPARATOR_RANGES[:, 1])


# --- parameters ---------------------------------------------------------------------------------

def splitmix64(seed: int, n: int) -> np.ndarray:
    """``n`` successive SplitMix64 outputs for ``seed`` (exact integer arithmetic, no library RNG)."""
    out = np.empty(n, dtype=np.uint64)
    s = seed & MASK64
    for i in range(n):
        s = (s + 0x9E3779B97F4A7C15) & MASK64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out[i] = z ^ (z >> 31)
    return out


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` of the ``num_perm`` affine permutations ``(a x + b) mod 2^64``, ``a`` odd."""
    r = splitmix64(seed, 2 * num_perm)
    return np.ascontiguousarray(r[0::2] | np.uint64(1)), np.ascontiguousarray(r[1::2])


def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                       fn_weight: float = 0.5) -> tuple[int, int]:
    """datasketch's ``_optimal_param``: the (bands, rows) with ``bands * rows <= num_perm`` that
    minimise the weighted area of false positives below and false negatives above ``threshold``
    under the LSH S-curve ``1 - (1 - s^r)^b``. Same search and tie-breaking; Gauss-Legendre
    quadrature instead of SciPy's ``quad``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    nodes, weights = np.polynomial.legendre.leggauss(96)
    below = 0.5 * threshold * (nodes + 1.0)  # nodes mapped to [0, threshold]
    above = threshold + 0.5 * (1.0 - threshold) * (nodes + 1.0)  # and to [threshold, 1]
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = 0.5 * threshold * float(np.sum(weights * (1 - (1 - below ** r) ** b)))
            fn = 0.5 * (1.0 - threshold) * float(np.sum(weights * (1 - above ** r) ** b))
            err = fp * fp_weight + fn * fn_weight
            if err < best:
                best, opt = err, (b, r)
    return opt


# --- the compiled library and its fallback ---------------------------------------------------

ABI = 3  # must match ABI_VERSION in csrc/minhash.c: an older build is treated as missing
EXTENSION = "filters.minhash._minhash"
_warned = False


def ext() -> Any:
    """The compiled extension, or None (then the NumPy fallback runs; warns once per process)."""
    mod = native.load(EXTENSION, ABI)
    if mod is None:
        _warn_fallback()
    return mod


def backend() -> str:
    """``"compiled (<SIMD path>)"`` or ``"numpy"``: what the kernels below run on."""
    mod = native.load(EXTENSION, ABI)
    return f"compiled ({mod.path()})" if mod is not None else "numpy"


def _warn_fallback() -> None:
    global _warned
    if _warned or not native.enabled():
        return
    _warned = True
    warnings.warn(f"MinHash runs on its NumPy fallback (same results, several times slower): "
                  f"{native.missing_reason(EXTENSION)}. For the compiled kernels, {native.REBUILD_HINT}.",
                  RuntimeWarning, stacklevel=3)


def _c(a: np.ndarray, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def _word_bound(offsets: np.ndarray) -> np.ndarray:
    """Upper bound of words (and shingles) per document: one per two bytes, plus one."""
    return (offsets[1:] - offsets[:-1]) // 2 + 1


def lowers_in_kernel() -> bool:
    """Whether ``lower=True`` runs in the compiled kernel (else the kernels below lower-case with
    Polars first: same bytes, one more copy of the text)."""
    return native.load(EXTENSION, ABI) is not None


def polars_lowered(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The texts of (data, offsets) lower-cased by Polars' ``str.to_lowercase``: the definition
    that ``lower=True`` follows (and what the NumPy fallback runs)."""
    import polars as pl
    import pyarrow as pa

    from engines.strings import string_buffers
    offsets = _c(offsets, np.int64)
    arr = pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(_c(data, np.uint8)))
    series = pl.from_arrow(arr)
    assert isinstance(series, pl.Series)
    return string_buffers(series.str.to_lowercase())


def signatures_kernel(data, offsets, ngram, fold_digits, a, b, bands, rows, keep_k, sep_lo, sep_hi, lower=False):
    """MinHash + LSH bands of every document of an Arrow string column.

    ``data``/``offsets``: the UTF-8 buffer and the n+1 offsets of the texts, lower-cased already,
    or lower-cased here with ``lower=True`` (as Polars' ``str.to_lowercase``: in the word hasher
    of the compiled kernel, without a copy of the text; by Polars before the NumPy fallback).
    Returns ``(band_keys[n, bands], n_shingles[n], stored, stored_offsets[n + 1])`` where
    ``stored`` holds each document's bottom-``keep_k`` shingle hashes (uint32, ascending);
    a document without any word gets ``n_shingles = 0`` and band keys of ``NO_VALUE``.
    """
    data, offsets = _c(data, np.uint8), _c(offsets, np.int64)
    a, b = _c(a, np.uint64), _c(b, np.uint64)
    mod = ext()
    if mod is None:
        if lower:
            data, offsets = polars_lowered(data, offsets)
        return nk.signatures(data, offsets, ngram, fold_digits, a, b, bands, rows, keep_k, sep_lo, sep_hi)
    n = len(offsets) - 1
    band_keys = np.empty((n, bands), dtype=np.uint64)
    counts = np.empty(n, dtype=np.int64)
    stored = np.empty(int(np.minimum(_word_bound(offsets), keep_k).sum()) + 1, dtype=np.uint32)
    stored_off = np.empty(n + 1, dtype=np.int64)
    mod.signatures(data, offsets, int(ngram), int(fold_digits), a, b, int(bands), int(rows), int(keep_k),
                   _c(sep_lo, np.int64), _c(sep_hi, np.int64), band_keys, counts, stored, stored_off, int(lower))
    return band_keys, counts, stored[:stored_off[n]], stored_off


def signature_matrix_kernel(data, offsets, ngram, fold_digits, a, b, sep_lo, sep_hi, lower=False):
    """The full MinHash signatures (n x num_perm, uint64) and distinct shingle counts; used by
    tests and benchmarks to compare Jaccard estimates (the stage itself stores band keys only).
    ``lower``: as in ``signatures_kernel``."""
    data, offsets = _c(data, np.uint8), _c(offsets, np.int64)
    a, b = _c(a, np.uint64), _c(b, np.uint64)
    mod = ext()
    if mod is None:
        if lower:
            data, offsets = polars_lowered(data, offsets)
        return nk.signature_matrix(data, offsets, ngram, fold_digits, a, b, sep_lo, sep_hi)
    n = len(offsets) - 1
    sig = np.empty((n, len(a)), dtype=np.uint64)
    counts = np.empty(n, dtype=np.int64)
    mod.signature_matrix(data, offsets, int(ngram), int(fold_digits), a, b, _c(sep_lo, np.int64),
                         _c(sep_hi, np.int64), sig, counts, int(lower))
    return sig, counts


def shingle_hashes_kernel(data, offsets, ngram, fold_digits, sep_lo, sep_hi, lower=False):
    """Every document's shingle hashes in text order (flat array + n+1 offsets); ``lower``: as in
    ``signatures_kernel``."""
    data, offsets = _c(data, np.uint8), _c(offsets, np.int64)
    mod = ext()
    if mod is None:
        if lower:
            data, offsets = polars_lowered(data, offsets)
        return nk.shingle_hashes(data, offsets, ngram, fold_digits, sep_lo, sep_hi)
    n = len(offsets) - 1
    out = np.empty(int(_word_bound(offsets).sum()) + 1, dtype=np.uint64)
    out_off = np.empty(n + 1, dtype=np.int64)
    mod.shingle_hashes(data, offsets, int(ngram), int(fold_digits), _c(sep_lo, np.int64), _c(sep_hi, np.int64),
                       out, out_off, int(lower))
    return out[:out_off[n]], out_off


def bucket_pairs_kernel(keys, pos, window):
    """Candidate pairs from (band key, document position) rows sorted by key then position. In
    each bucket every member is paired with the bucket's first member and with up to ``window``
    members before it (all pairs when the bucket is small), so a member that fails verification
    against the first can still join through another."""
    keys, pos = _c(keys, np.uint64), _c(pos, np.int64)
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    mod = ext()
    if mod is None:
        return nk.bucket_pairs(keys, pos, window)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    bound = int(((sizes - 1) * (np.minimum(sizes - 1, window) + 1)).sum()) + 1
    lo, hi = np.empty(bound, dtype=np.int64), np.empty(bound, dtype=np.int64)
    m = mod.bucket_pairs(keys, pos, int(window), lo, hi)
    return lo[:m], hi[:m]


def jaccard_kernel(values, offsets, full, left, right):
    """Jaccard of each (left, right) pair of stored shingle sets (local indices into
    ``offsets``). Exact when both sets are complete (``full``); otherwise the bottom-k
    estimate |bottom_k(A u B) n A n B| / |bottom_k(A u B)| with k the smaller stored size."""
    values, offsets = _c(values, np.uint32), _c(offsets, np.int64)
    full = _c(full, np.uint8)
    left, right = _c(left, np.int64), _c(right, np.int64)
    mod = ext()
    if mod is None:
        return nk.jaccard(values, offsets, full, left, right)
    out = np.empty(len(left), dtype=np.float64)
    mod.jaccard(values, offsets, full, left, right, out)
    return out


def union_kernel(parent, lo, hi):
    """Union-find over edges (in place); the larger root always goes under the smaller, so every
    root is its component's smallest position whatever the order of the edges (deterministic)."""
    assert parent.dtype == np.int64 and parent.flags.c_contiguous
    lo, hi = _c(lo, np.int64), _c(hi, np.int64)
    mod = ext()
    if mod is None:
        nk.union(parent, lo, hi)
    else:
        mod.union(parent, lo, hi)


def roots_kernel(parent):
    """Every entry of the union-find array becomes its root (in place); returns it."""
    assert parent.dtype == np.int64 and parent.flags.c_contiguous
    mod = ext()
    if mod is None:
        nk.roots(parent)
    else:
        mod.roots(parent)
    return parent


def fnv_strings_kernel(data, offsets):
    """FNV-1a 64 + fmix64 of each string of an Arrow string column (the document key)."""
    data, offsets = _c(data, np.uint8), _c(offsets, np.int64)
    mod = ext()
    if mod is None:
        return nk.fnv_strings(data, offsets)
    out = np.empty(len(offsets) - 1, dtype=np.uint64)
    mod.fnv_strings(data, offsets, out)
    return out


def read_u32_ranges(fd: int, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uint32 values ``[starts[i], ends[i])`` of an open file, concatenated, and the n+1
    offsets of each range in the result (one ``pread`` per range; nothing mapped)."""
    starts, ends = _c(starts, np.int64), _c(ends, np.int64)
    local_off = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=local_off[1:])
    values = np.empty(int(local_off[-1]), dtype=np.uint32)
    mod = ext()
    if mod is None:
        nk.read_u32_ranges(fd, starts, ends, values, local_off)
    else:
        mod.read_u32_ranges(int(fd), starts, ends, values)
    return values, local_off
