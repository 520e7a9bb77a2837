"""Lower-casing inside the compiled MinHash kernel (``lower=True``) against Polars'
``str.to_lowercase``, the path the signatures took before (and still take on the NumPy fallback).

The kernel's tables are checked against the installed Polars over every code point; the kernel's
output (shingle hashes, signatures, band keys, counts, stored sets) against the Polars-lowered
path, byte for byte, on the real corpora (English, French and Spanish Wikipedia with their Greek,
Cyrillic and accented words, Gutenberg, Python docs) and on the same texts upper-cased,
title-cased and case-swapped by Python, which puts capital sigmas (word-final and not), dotted
capital I and the other special mappings into real contexts."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from engines.strings import string_buffers
from filters.minhash import kernels as k
from filters.minhash import lower_table
from filters.minhash.signatures import MinHashParams, SignatureComputer
from tests.helpers import real_texts
from tests.minhash import reference as ref

pytestmark = pytest.mark.skipif(k.ext() is None, reason="compiled kernels not built")


@pytest.fixture(scope="module")
def tables():
    return lower_table.tables()


@pytest.fixture(scope="module")
def texts(corpora):
    base = [t for name in ("wiki_en", "wiki_fr", "wiki_es") for t in real_texts(corpora, name, 3000)]
    base += real_texts(corpora, "python_docs", 40) + real_texts(corpora, "gutenberg", 6)
    # Every text with a letter outside Latin-1, in full, and a sample of the rest.
    special = [t for t in base if any(ord(c) > 0x24F for c in t)]
    sample = special + base[::7]
    variants = [f(t) for t in sample for f in (str.upper, str.title, str.swapcase)]
    # The sigma rule looks at the whole document: the same Greek words after ASCII prefixes of
    # every length around Polars' 16-byte ASCII blocks.
    greek = [t for t in special if "ς" in t][:20]
    prefixes = [g[:n] + g.upper() for g in base[:3] for n in range(10, 40)][:60]
    shifted = [p + " " + w.upper() for p in prefixes for w in greek[:3]]
    return sample + variants + shifted


def test_tables_match_the_installed_polars(tables):
    """The committed header is what the installed Polars gives (a Polars upgrade that changes
    lower-casing makes this fail: regenerate with ``python -m filters.minhash.lower_table``)."""
    want = lower_table.render(*tables).split("\n", 1)[1]  # the first line names the Polars version
    with open(lower_table.HEADER) as f:
        have = f.read().split("\n", 1)[1]
    assert have == want


def test_lowering_never_moves_a_word_break(tables):
    """Every code point and its lower case are both word characters or both separators, so the
    kernel's word bound (one word per two bytes of the raw text) still holds."""
    mapping, _ = tables
    assert mapping[0x130] == (0x69, 0x307) and mapping[0x3A3] == (0x3C3,) and mapping[ord("A")] == (ord("a"),)
    for cp, seq in mapping.items():
        assert {ref.is_separator(chr(c)) for c in seq} == {ref.is_separator(chr(cp))}, hex(cp)


def _old_and_new(texts: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    series = pl.Series(texts)
    lowered = string_buffers(series.str.to_lowercase())
    raw = string_buffers(series)
    return lowered, raw


def test_kernel_lowering_equals_polars_on_real_text(texts):
    lowered, raw = _old_and_new(texts)
    assert raw[0].tobytes() != lowered[0].tobytes()  # the variants do change case
    for fold in (False, True):
        for ngram in (1, 5):
            want = k.shingle_hashes_kernel(*lowered, ngram, fold, k.SEP_LO, k.SEP_HI)
            got = k.shingle_hashes_kernel(*raw, ngram, fold, k.SEP_LO, k.SEP_HI, lower=True)
            assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0]), (fold, ngram)
    a, b = k.permutations(112, 1)
    for keep_k, bands, rows in ((0, 14, 8), (4096, 0, 0), (64, 9, 12)):
        want = k.signatures_kernel(*lowered, 5, False, a, b, bands, rows, keep_k, k.SEP_LO, k.SEP_HI)
        got = k.signatures_kernel(*raw, 5, False, a, b, bands, rows, keep_k, k.SEP_LO, k.SEP_HI, lower=True)
        for x, y in zip(got, want):
            assert np.array_equal(x, y), (keep_k, bands)
    want = k.signature_matrix_kernel(*lowered, 5, False, a, b, k.SEP_LO, k.SEP_HI)
    got = k.signature_matrix_kernel(*raw, 5, False, a, b, k.SEP_LO, k.SEP_HI, lower=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_every_code_point_lowers_as_polars(tables):
    """Brute force over the tables' domain: every code point that changes, in blocks, each alone
    between spaces and all run together (one word), upper-case sigmas included."""
    mapping, _ = tables
    cps = sorted(mapping)
    docs = []
    for i in range(0, len(cps), 48):
        block = [chr(c) for c in cps[i:i + 48]]
        docs += [" ".join(block), "".join(block), "".join(block) + " Σ", "x" + "".join(block) + "Σ"]
    lowered, raw = _old_and_new(docs)
    want = k.shingle_hashes_kernel(*lowered, 1, False, k.SEP_LO, k.SEP_HI)
    got = k.shingle_hashes_kernel(*raw, 1, False, k.SEP_LO, k.SEP_HI, lower=True)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])


def test_stage_path_equals_the_polars_path(texts):
    """What the stage computes (raw text, lowered in the kernel, split over threads) equals the
    path before it: Polars' lower case, then the kernel without lowering; and the NumPy fallback
    lowers the same way."""
    from filters.minhash import numpy_kernels as nk

    series = pl.Series(texts)
    comp = SignatureComputer(MinHashParams(threads=2))
    data, offsets, lower = comp.buffers(series)
    assert lower
    lowered = comp.lowered(series)
    a, b = comp.a, comp.b
    got = comp.compute(series, keep_k=256)
    want = k.signatures_kernel(*lowered, 5, False, a, b, 14, 8, 256, k.SEP_LO, k.SEP_HI)
    for x, y in zip(got, want):
        assert np.array_equal(x, y)
    few = texts[:200] + texts[-200:]
    d, o = string_buffers(pl.Series(few))
    fallback = nk.signatures(*k.polars_lowered(d, o), 5, False, a, b, 14, 8, 64, k.SEP_LO, k.SEP_HI)
    compiled = k.signatures_kernel(d, o, 5, False, a, b, 14, 8, 64, k.SEP_LO, k.SEP_HI, lower=True)
    for x, y in zip(fallback, compiled):
        assert np.array_equal(x, y)
