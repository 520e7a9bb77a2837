"""MinHash signatures: the kernel against a plain-Python reference, datasketch and exact Jaccard."""
from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest

from filters.minhash import kernels as k
from filters.minhash.signatures import MinHashParams, MinHashSignatures, SignatureComputer
from tests.helpers import real_texts
from tests.minhash import reference as ref


def edited(text: str, rate: float, rng: np.random.Generator, vocab: list[str]) -> str:
    """Substitute, delete or insert words at ``rate``."""
    out = []
    for w in text.split():
        u = rng.random()
        if u >= rate:
            out.append(w)
        elif u < rate * 0.4:
            out.append(vocab[int(rng.integers(len(vocab)))])
        elif u < rate * 0.7:
            continue
        else:
            out.extend([w, vocab[int(rng.integers(len(vocab)))]])
    return " ".join(out)


@pytest.fixture(scope="module")
def pairs(corpora):
    """300 real-text pairs with Jaccard spread over (0, 1]: Wikipedia summaries (en, fr, es)
    against copies edited at rates from 0 to 30%."""
    rng = np.random.default_rng(4)
    texts = [t for name in ("wiki_en", "wiki_fr", "wiki_es") for t in real_texts(corpora, name, 400)
             if len(t.split()) >= 60][:300]
    vocab = sorted({w for t in texts for w in t.split()})
    rates = np.linspace(0.0, 0.3, len(texts))
    return [(t, edited(t, float(r), rng, vocab)) for t, r in zip(texts, rates)]


def test_kernel_matches_plain_python_reference(corpora):
    texts = (real_texts(corpora, "wiki_en", 40) + real_texts(corpora, "wiki_fr", 40) + real_texts(corpora, "wiki_es", 40)
             + real_texts(corpora, "python_docs", 5)
             + ["", "   ", "!!! ... ---", "Un deux", "Ünïcödé — «guillemets» 3,14 € x²", "L'été 2024: 12 °C…", "a\u00a0b\u2003c"])
    for fold in (False, True):
        comp = SignatureComputer(MinHashParams(fold_digits=fold))
        got = comp.shingle_hashes(pl.Series(texts))
        for text, hashes in zip(texts, got):
            assert hashes.tolist() == ref.shingle_hashes(text, 5, fold)
    assert ref.words("L'été 2024: 12 °C…", fold_digits=True) == ["l", "été", "0000", "00", "c"]


def test_signatures_and_band_keys_follow_the_definition(corpora):
    texts = real_texts(corpora, "wiki_es", 5) + ["two words"]
    comp = SignatureComputer(MinHashParams(num_perm=24, bands=3, rows=8, seed=5))
    sig, _ = comp.signatures(pl.Series(texts))
    keys = comp.compute(pl.Series(texts))[0]
    for i, text in enumerate(texts):
        expected = ref.signature(text, 24, 5)
        assert sig[i].tolist() == expected
        assert keys[i].tolist() == ref.band_keys(expected, 3, 8)


def test_optimal_bands_rows_match_datasketch():
    from datasketch.lsh import _optimal_param

    for threshold in (0.5, 0.7, 0.8, 0.9):
        for num_perm in (64, 112, 256):
            assert k.optimal_bands_rows(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    p = MinHashParams(threshold=0.8)
    assert p.resolved() == (9, 12)
    assert MinHashParams().resolved() == (14, 8)
    assert MinHashParams(bands=20, rows=5).resolved() == (20, 5)
    with pytest.raises(ValueError):
        MinHashParams(bands=20, rows=8)


def test_estimates_agree_with_datasketch_and_exact_jaccard(pairs):
    from datasketch import MinHash

    num_perm = 128
    comp = SignatureComputer(MinHashParams(num_perm=num_perm, seed=11))
    left, right = [a for a, _ in pairs], [b for _, b in pairs]
    sig_l, _ = comp.signatures(pl.Series(left))
    sig_r, _ = comp.signatures(pl.Series(right))
    ours = (sig_l == sig_r).mean(axis=1)
    exact, theirs = [], []
    for a, b in pairs:
        sa, sb = set(ref.shingles(a)), set(ref.shingles(b))
        exact.append(ref.jaccard(sa, sb))
        ma, mb = MinHash(num_perm=num_perm, seed=3), MinHash(num_perm=num_perm, seed=3)
        ma.update_batch([s.encode() for s in sa])
        mb.update_batch([s.encode() for s in sb])
        theirs.append(ma.jaccard(mb))
    exact_a, theirs_a = np.array(exact), np.array(theirs)
    assert exact_a.min() < 0.3 and exact_a.max() == 1.0  # the pairs cover the range
    se = np.sqrt(exact_a * (1 - exact_a) / num_perm)
    # Each estimate within 4 standard errors of the truth, and of datasketch's (difference of two
    # independent estimates: sqrt(2) standard errors), allowing 1% of pairs outside.
    assert np.mean(np.abs(ours - exact_a) > 4 * se + 1 / num_perm) <= 0.01
    assert np.mean(np.abs(ours - theirs_a) > 4 * np.sqrt(2) * se + 2 / num_perm) <= 0.01
    # No bias: the mean error is within 4 standard errors of the mean.
    assert abs(np.mean(ours - exact_a)) < 4 * np.sqrt(np.mean(se ** 2) / len(pairs))
    # Same accuracy as datasketch: mean squared errors within a factor 1.6 of each other.
    mse_ours, mse_theirs = np.mean((ours - exact_a) ** 2), np.mean((theirs_a - exact_a) ** 2)
    assert 1 / 1.6 < mse_ours / mse_theirs < 1.6


def test_stage_output_and_bad_input(corpora):
    text = real_texts(corpora, "wiki_en", 1)[0]
    huge = " ".join(real_texts(corpora, "gutenberg", 12))  # ~250k words, ~1.4 MB
    batch = pl.DataFrame({"text": [text, "", " ,;: -- !! ", "three short words", "three short words", huge]})
    stage = MinHashSignatures()
    out = stage.transform(batch)
    assert out.columns == list(stage.writes())
    bands = out.get_column("minhash_bands").to_list()
    counts = out.get_column("n_shingles").to_list()
    assert len(bands[0]) == 14 and counts[0] == len(set(ref.shingles(text)))
    # Empty after normalisation: no signature.
    assert bands[1] is None and bands[2] is None and counts[1] == counts[2] == 0
    # Shorter than the n-gram: one shingle of all its words; identical short texts match.
    assert counts[3] == 1 and bands[3] == bands[4]
    # Enormous: processed whole.
    assert counts[5] == len(set(ref.shingle_hashes(huge))) > 100_000
    # The shingle sets the dedup fit verifies with: bottom-k of the 32-bit values.
    comp = SignatureComputer(MinHashParams())
    _, n, stored, off = comp.compute(batch.get_column("text"), keep_k=1000, band_keys=False)
    assert stored[off[0]:off[1]].tolist() == sorted({h >> 32 for h in ref.shingle_hashes(text)})
    assert stored[off[5]:off[6]].tolist() == sorted({h >> 32 for h in ref.shingle_hashes(huge)})[:1000]
    assert n.tolist() == counts


def test_threads_and_batches_do_not_change_output(corpora):
    texts = pl.Series(real_texts(corpora, "wiki_fr", 1500))
    one = SignatureComputer(MinHashParams(threads=1)).compute(texts)
    two = SignatureComputer(MinHashParams(threads=2)).compute(texts)
    parts = [SignatureComputer(MinHashParams(threads=1)).compute(texts.slice(s, 500)) for s in range(0, 1500, 500)]
    for a, b in zip(one, two):
        assert np.array_equal(a, b)
    assert np.array_equal(one[0], np.concatenate([p[0] for p in parts]))
    # The key ignores threads and a threshold that resolves to the same geometry.
    assert MinHashSignatures({"threads": 2}).key("s") == MinHashSignatures().key("s")
    assert MinHashSignatures({"bands": 14, "rows": 8}).key("s") == MinHashSignatures().key("s")
    assert MinHashSignatures({"threshold": 0.8}).key("s") != MinHashSignatures().key("s")


def _fallback_inputs(corpora):
    texts = (real_texts(corpora, "wiki_en", 300) + real_texts(corpora, "wiki_fr", 200) + real_texts(corpora, "wiki_es", 200)
             + real_texts(corpora, "python_docs", 20)
             + ["", "   ", "!!! ... ---", "Un deux", "Ünïcödé — «guillemets» 3,14 € x²", "L'été 2024: 12 °C…",
                "a\u00a0b\u2003c", "日本語のテキスト、句読点。", "emoji 😀 between 🎉 words", "x" * 5000])
    comp = SignatureComputer(MinHashParams())
    data, offsets = comp.lowered(pl.Series(texts))
    # bytes that are not well-formed UTF-8 (the C decoder is lenient; the fallback must match it)
    bad = [b"ab\xe0cd ef gh", b"\x80\x81 abc def", b"abc def \xf0\x9f", b"\xc3", b"x\xc3\xa9\xa9y z w"]
    data = np.concatenate([data[:offsets[-1]], np.frombuffer(b"".join(bad), np.uint8)])
    offsets = np.concatenate([offsets, offsets[-1] + np.cumsum([len(b) for b in bad])])
    return data, offsets


@pytest.mark.skipif(k.ext() is None, reason="compiled kernels not built")
def test_numpy_fallback_equals_compiled_kernels(corpora):
    """The vectorised NumPy fallback (used when the extension is not built) gives the compiled
    kernels' results bit for bit: shingles, signatures, band keys, stored sets, counts, candidate
    pairs, Jaccard, union-find and document keys."""
    from filters.minhash import numpy_kernels as nk

    data, offsets = _fallback_inputs(corpora)
    a, b = k.permutations(112, 1)
    for fold in (False, True):
        for ngram in (1, 5):
            want = k.shingle_hashes_kernel(data, offsets, ngram, fold, k.SEP_LO, k.SEP_HI)
            got = nk.shingle_hashes(data, offsets, ngram, fold, k.SEP_LO, k.SEP_HI)
            assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0]), (fold, ngram)
    for keep_k, bands, rows in ((0, 14, 8), (64, 14, 8), (4096, 0, 0), (3, 9, 12)):
        want = k.signatures_kernel(data, offsets, 5, False, a, b, bands, rows, keep_k, k.SEP_LO, k.SEP_HI)
        got = nk.signatures(data, offsets, 5, False, a, b, bands, rows, keep_k, k.SEP_LO, k.SEP_HI)
        for x, y in zip(got, want):
            assert np.array_equal(x, y), (keep_k, bands)
    sub = offsets[100:401]  # a slice of the batch, as the threads get it
    assert np.array_equal(nk.signatures(data, sub, 5, False, a, b, 14, 8, 0, k.SEP_LO, k.SEP_HI)[0],
                          k.signatures_kernel(data, sub, 5, False, a, b, 14, 8, 0, k.SEP_LO, k.SEP_HI)[0])
    sig = k.signature_matrix_kernel(data, offsets, 5, False, a, b, k.SEP_LO, k.SEP_HI)
    for x, y in zip(nk.signature_matrix(data, offsets, 5, False, a, b, k.SEP_LO, k.SEP_HI), sig):
        assert np.array_equal(x, y)
    assert np.array_equal(nk.fnv_strings(data, offsets), k.fnv_strings_kernel(data, offsets))

    rng = np.random.default_rng(5)
    keys = rng.integers(0, 400, size=6000).astype(np.uint64)
    pos = rng.integers(0, 5000, size=6000).astype(np.int64)
    order = np.lexsort((pos, keys))
    for window in (1, 3, 8):
        want = k.bucket_pairs_kernel(keys[order], pos[order], window)
        got = nk.bucket_pairs(keys[order], pos[order], window)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    stored, soff = k.signatures_kernel(data, offsets, 5, False, a, b, 0, 0, 40, k.SEP_LO, k.SEP_HI)[2:]
    nsets = len(soff) - 1
    full = rng.random(nsets) < 0.5
    left, right = rng.integers(0, nsets, 3000), rng.integers(0, nsets, 3000)
    assert np.array_equal(nk.jaccard(stored, soff, full.astype(np.uint8), left, right, chunk_values=5000),
                          k.jaccard_kernel(stored, soff, full, left, right))
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        f = f"{tmp}/sets.u32"
        stored.tofile(f)
        fd = os.open(f, os.O_RDONLY)
        try:
            docs = np.unique(rng.integers(0, nsets, 200))
            got = k.read_u32_ranges(fd, soff[docs], soff[docs + 1])
            vals = np.empty(len(got[0]), np.uint32)
            nk.read_u32_ranges(fd, soff[docs], soff[docs + 1], vals, got[1])
            assert np.array_equal(vals, got[0])
            assert np.array_equal(got[0], np.concatenate([stored[soff[d]:soff[d + 1]] for d in docs]))
        finally:
            os.close(fd)
    n = 4000
    lo, hi = rng.integers(0, n, 2500), rng.integers(0, n, 2500)
    p1, p2 = np.arange(n), np.arange(n)
    for part in range(5):
        sl = slice(part * 500, (part + 1) * 500)
        k.union_kernel(p1, lo[sl], hi[sl])
        nk.union(p2, lo[sl], hi[sl])
    k.roots_kernel(p1)
    nk.roots(p2)
    assert np.array_equal(p1, p2)


@pytest.mark.skipif(k.ext() is None, reason="compiled kernels not built")
def test_every_simd_path_gives_the_same_signatures(corpora):
    from engines import native

    texts = pl.Series(real_texts(corpora, "wiki_en", 400) + real_texts(corpora, "wiki_es", 100))
    comp = SignatureComputer(MinHashParams(threads=1))
    results = []
    for path in native.paths():
        with native.use_path(path):
            results.append((comp.compute(texts), comp.compute(texts, keep_k=256), comp.signatures(texts)))
    for other in results[1:]:
        for x, y in zip(other, results[0]):
            for xa, ya in zip(x, y):
                assert np.array_equal(xa, ya)
