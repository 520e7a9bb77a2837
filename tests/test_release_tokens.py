"""The release's ``n_tokens`` (warehouse/releasing/tokens.py): the compiled counter gives exactly
the counts of the regex ``\\S+`` (Polars/Rust), the release's definition, on the real corpora and
on text made of every whitespace-like character; the fallback without the kernel is the regex."""
from __future__ import annotations

import random

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_series_equal

from warehouse.releasing import tokens

# Unicode White_Space, the characters Python's str.isspace adds (U+001C..U+001F), and look-alikes
# that are not White_Space (zero-width space, Mongolian vowel separator, BOM, word joiner).
WHITE = ["\t", "\n", "\v", "\f", "\r", " ", "\x85", "\xa0", "\u1680", *[chr(c) for c in range(0x2000, 0x200B)],
         "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_WHITE = ["\x1c", "\x1d", "\x1e", "\x1f", "\u200b", "\u180e", "\ufeff", "\u2060", "\x00", "\x7f"]
WORDS = ["a", "é", "日本", "🙂", "\u0301", "ab", "\u2100", "\u2fff", "\u3001", "Ǆ"]


def _regex(texts: pl.Series) -> pl.Series:
    return texts.str.count_matches(tokens.TOKEN_REGEX).cast(pl.Int64).alias("n_tokens")


def test_kernel_is_built():
    assert tokens.ext() is not None, "filters.heuristics._chunks is not built: reinstall with `pip install -e .`"


def test_counts_equal_the_regex_on_every_whitespace_character():
    rng = random.Random(5)
    alphabet = WHITE + NOT_WHITE + WORDS
    texts = ["", " ", "a", " a ", "a\x1cb", "a\u200bb", *WHITE, *NOT_WHITE, *(f"x{c}y" for c in WHITE + NOT_WHITE)]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    s = pl.Series("text", texts + [None], dtype=pl.String)
    got = tokens.count_tokens(s)
    assert_series_equal(got, _regex(s))
    assert got[-1] is None and got.dtype == pl.Int64
    assert got[texts.index("a\x1cb")] == 1 and got[texts.index("x\u3000y")] == 2


@pytest.mark.parametrize("name", ["wiki_en", "wiki_fr", "python_docs", "gutenberg"])
def test_counts_equal_the_regex_on_the_corpora(corpora, name):
    texts = pl.from_arrow(pq.read_table(corpora / f"{name}.parquet", columns=["text"]).column("text"))
    assert isinstance(texts, pl.Series) and len(texts) > 10
    got = tokens.count_tokens(texts)
    assert_series_equal(got, _regex(texts))
    assert int(got.sum()) > 1000


def test_fallback_without_the_kernel_is_the_regex(monkeypatch):
    s = pl.Series("text", ["a b", "\u3000x\x1cy ", None, ""])
    monkeypatch.setattr(tokens, "ext", lambda: None)
    assert tokens.count_tokens(s).to_list() == [2, 1, None, 0]


@pytest.mark.parametrize("kind", ["string", "large_string", "chunked_sliced"])
def test_arrow_counts_equal_the_regex(corpora, kind):
    """``count_tokens_arrow`` (what the release uses: the kernel on the Arrow table's own buffers)
    gives the regex's counts on real text with nulls, in every string layout the release can hold."""
    import pyarrow as pa

    texts = pq.read_table(corpora / "wiki_fr.parquet", columns=["text"]).column("text").combine_chunks()
    texts = pa.concat_arrays([texts.cast(pa.string()), pa.array(["", None, "a\u3000b\x1c"], pa.string())])
    arr: pa.Array | pa.ChunkedArray = texts
    if kind == "large_string":
        arr = texts.cast(pa.large_string())
    elif kind == "chunked_sliced":  # chunks that start mid-buffer (non-zero offsets)
        arr = pa.chunked_array([texts.slice(1, 7), texts.slice(8)])
    got = pl.Series("n_tokens", tokens.count_tokens_arrow(arr), dtype=pl.Int64)
    want = _regex(pl.Series("text", texts.slice(1) if kind == "chunked_sliced" else texts, dtype=pl.String))
    assert_series_equal(got, want)
    assert got[-2] is None and got[-1] == 2


def test_arrow_fallback_without_the_kernel_is_the_regex(monkeypatch):
    import pyarrow as pa

    monkeypatch.setattr(tokens, "ext", lambda: None)
    assert tokens.count_tokens_arrow(pa.array(["a b", "\u3000x\x1cy ", None, ""])).to_pylist() == [2, 1, None, 0]


@pytest.mark.parametrize("kernel", [True, False])
def test_blank_from_token_counts_is_the_strip_rule(corpora, monkeypatch, kernel):
    """Without a text chain the release decides ``release:empty_text`` from the token counts
    (``fates.blank_texts``) instead of stripping the text in Polars: the same rows, on every
    whitespace-like character, on nulls and on real text."""
    import pyarrow as pa

    from warehouse.releasing.fates import blank_texts

    if not kernel:
        monkeypatch.setattr(tokens, "ext", lambda: None)
    rng = random.Random(11)
    texts = ["", *WHITE, *NOT_WHITE, "".join(WHITE), "".join(WHITE) + "\x1c", None]
    texts += ["".join(rng.choice(WHITE + NOT_WHITE[:2] + WORDS[:1]) for _ in range(rng.randint(0, 6))) for _ in range(2000)]
    texts += pq.read_table(corpora / "wiki_en.parquet", columns=["text"]).column("text").to_pylist()[:200]
    arr = pa.array(texts, pa.large_string())
    got = blank_texts(tokens.count_tokens_arrow(arr))
    want = pl.Series("text", texts, dtype=pl.String).fill_null("").str.strip_chars().str.len_bytes() == 0
    assert got.to_list() == want.to_list()
    assert 0 < int(got.sum()) < len(texts) - 200  # both kinds present
