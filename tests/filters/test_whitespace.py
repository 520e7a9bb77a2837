"""``collapse_whitespace`` (filters/whitespace.py) gives the text of the plain ``\\s+`` -> " " rewrite
the normalising stages used before, on every whitespace-like character, random mixes of them and
the real corpora; and it matches a hand-written rewrite over the Unicode White_Space list."""
from __future__ import annotations

import random

import polars as pl
import pyarrow.parquet as pq
from polars.testing import assert_series_equal

from filters.whitespace import collapse_whitespace
from tests.test_release_tokens import NOT_WHITE, WHITE, WORDS


def _plain(texts: pl.Series) -> pl.Series:
    return texts.str.replace_all(r"\s+", " ")


def _by_hand(text: str) -> str:
    """Runs of Unicode White_Space characters (the WHITE list) replaced by one space, char by char."""
    out: list[str] = []
    for ch in text:
        if ch in WHITE:
            if not out or out[-1] != "\0ws":
                out.append("\0ws")
        else:
            out.append(ch)
    return "".join(" " if c == "\0ws" else c for c in out)


def test_equals_the_plain_rewrite_on_every_whitespace_character():
    rng = random.Random(11)
    alphabet = WHITE + NOT_WHITE + WORDS + [" "] * 10
    texts = ["", " ", "  ", "a b", "a  b", "a\tb", " \t", "\t ", *WHITE, *NOT_WHITE]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50))) for _ in range(5000)]
    s = pl.Series("text", texts + [None], dtype=pl.String)
    got = collapse_whitespace(s)
    assert_series_equal(got, _plain(s))
    assert got.to_list()[:-1] == [_by_hand(t) for t in texts]
    assert got[-1] is None
    assert got[texts.index("a\tb")] == "a b" and got[texts.index("\t ")] == " "


def test_equals_the_plain_rewrite_on_the_corpora(corpora):
    texts = pl.concat([pl.Series(pq.read_table(f, columns=["text"]).column("text").to_pylist(), dtype=pl.String)
                       for f in sorted(corpora.glob("*.parquet"))])
    assert texts.len() > 1000
    changed = collapse_whitespace(texts)
    assert_series_equal(changed, _plain(texts))
    assert (changed != texts).sum() > 100  # the corpora do have newlines and runs to collapse


def test_works_inside_an_expression():
    df = pl.DataFrame({"t": ["A \n\n B", "c\u3000d"]})
    assert df.select(collapse_whitespace(pl.col("t").str.to_lowercase())).to_series().to_list() == ["a b", "c d"]
