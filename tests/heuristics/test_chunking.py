"""The compiled text kernels of the heuristic filters (filters/heuristics/csrc/chunks.c) against the
Polars expressions they replace: whitespace chunks and their codes, duplicated lines and
paragraphs, on real text and on edge cases (Unicode whitespace, blank texts, nulls, newline runs)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from filters.heuristics import chunking, gopher
from filters.heuristics.words import NON_WS_RUN, _encode
from tests.helpers import real_texts

EDGE = ["", None, " ", "\n", "\n\n", "a", " a\u3000b\u2003 c\x1cd \x85e\xa0f\u2028g\u205fh ",
        "x" * 300, "abcdefgh abcdefghi abcdefgh abcdefghi abcdefgh", "é è é\tè\u1680é",
        "line\nline\n\nline\n\n\npara two\nline\n", "\n\nlead\n\n\nlead\n\n", "a\r\nb\r\na\r\n",
        "  para one  \n\n  para one  \n\n\n para one", "same\nsame\nsame", "émoji 😀\n😀\n😀 😀"]


@pytest.fixture(scope="module")
def texts(corpora):
    got = [t for name in ("wiki_en", "wiki_fr", "python_docs", "gutenberg") for t in real_texts(corpora, name, 150)]
    return pl.Series("text", got + EDGE + got[:40], dtype=pl.String)


def _polars(monkeypatch):
    monkeypatch.setattr(chunking, "ext", lambda: None)


@pytest.mark.skipif(chunking.ext() is None, reason="compiled kernels not built")
def test_chunk_codes_match_the_polars_path(texts, monkeypatch):
    fast = chunking.chunk_codes(texts, NON_WS_RUN, _encode)
    _polars(monkeypatch)
    slow = chunking.chunk_codes(texts, NON_WS_RUN, _encode)
    for a, b in zip(fast[:2] + fast[3:], slow[:2] + slow[3:]):
        assert np.array_equal(a, b)
    assert fast[2].to_list() == slow[2].to_list()
    assert len(fast[2]) > 1000  # real text: many distinct chunks, numbered by first appearance


@pytest.mark.skipif(chunking.ext() is None, reason="compiled kernels not built")
@pytest.mark.parametrize("paragraphs", [False, True])
def test_duplicated_items_match_the_polars_path(texts, monkeypatch, paragraphs):
    docs = pl.DataFrame({"text": texts.fill_null("")}).with_row_index("row")
    fast = gopher._item_stats(docs, paragraphs)
    _polars(monkeypatch)
    slow = gopher._item_stats(docs, paragraphs)
    for c in ("n_items", "dup_items", "dup_chars"):
        assert np.array_equal(fast[c], slow[c]), c
    assert fast["dup_items"].sum() > 0


@pytest.mark.skipif(chunking.ext() is None, reason="compiled kernels not built")
def test_ngram_scan_matches_datatrove_functions():
    # datatrove's own functions on word lists, against the kernel on word hashes; words of one repeated
    # letter each, so that joining n-grams without spaces is unambiguous (as it is for real text)
    dt = pytest.importorskip("datatrove.pipeline.filters.gopher_repetition_filter")
    rng = np.random.default_rng(7)
    vocab = ["a", "bb", "ccc", "dddd", "eeeee"]
    docs = [[vocab[i] for i in rng.integers(0, size, n)] for size, n in
            [(1, 30), (2, 40), (3, 200), (5, 500), (2, 3), (5, 1), (4, 0), (2, 11)] * 3]
    docs += [["a", "bb", "a", "bb", "a", "bb", "ccc"], ["a"] * 9, []]
    words = [w for d in docs for w in d]
    index = {w: i for i, w in enumerate(vocab)}
    h = pl.Series([index[w] for w in words], dtype=pl.UInt32).hash(seed=3).to_numpy()
    chars = np.array([len(w) for w in words], dtype=np.int64)
    ends = np.cumsum([len(d) for d in docs]).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    for k in range(1, 11):
        top = np.empty(len(docs), dtype=np.int64)
        rep = np.empty(len(docs), dtype=np.int64)
        chunking.ext().ngram_scan(h, chars, starts, ends, k, 0, top)
        chunking.ext().ngram_scan(h, chars, starts, ends, k, 1, rep)
        for d, doc in enumerate(docs):
            grams = dt.get_n_grams(doc, k)
            assert top[d] == (dt.find_top_duplicate(grams) if grams else 0), (k, d)
            assert rep[d] == dt.find_all_duplicate(doc, k), (k, d)
    with pytest.raises(ValueError):
        chunking.ext().ngram_scan(h, chars, starts, ends + 10**6, 2, 0, top)


@pytest.mark.skipif(chunking.ext() is None, reason="compiled kernels not built")
def test_gopher_repetition_verdicts_match_the_python_path(texts, monkeypatch):
    # real text, and real text repeated in ways that trip each n-gram rule
    base = [t for t in texts.to_list() if t]
    made = [" ".join(base[i].split()[:12] * 6) for i in range(0, 60, 3)]
    made += [base[i] + " " + " ".join(base[i].split()[:40]) for i in range(1, 60, 3)]
    batch = pl.DataFrame({"text": base + made, "lang": ["en"] * (len(base) + len(made))})
    stage = gopher.GopherRepetition()
    fast = stage.transform(batch)
    _polars(monkeypatch)
    slow = stage.transform(batch)
    assert fast["reason"].to_list() == slow["reason"].to_list()
    reasons = set(fast["reason"].drop_nulls().to_list())
    assert any("gram" in r for r in reasons), reasons
