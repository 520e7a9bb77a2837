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
