"""The ``difficulty`` stage against references written independently here."""
from __future__ import annotations

import re
import unicodedata
import zlib
from pathlib import Path

import polars as pl
import pytest

from engines.stage import stage_class
from scorers.difficulty import Difficulty, compression_ratios, flesch_scores, mtld_scores


def ref_words(text: str) -> list[str]:
    """Lower-cased words by a character scan: letters (Unicode category L), joined across a
    single apostrophe between two letters."""
    s = text.lower()
    words, cur = [], []
    for i, ch in enumerate(s):
        if unicodedata.category(ch).startswith("L"):
            cur.append(ch)
        elif ch in "'’" and cur and i + 1 < len(s) and unicodedata.category(s[i + 1]).startswith("L"):
            cur.append(ch)
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words

VOWELS = set("aeiouy")


def ref_mtld(text: str, threshold: float = 0.72) -> float | None:
    """MTLD the textbook way: a token-by-token walk with a set of types, both directions."""
    words = ref_words(text)

    def factors(seq: list[str]) -> float:
        f, types, count, ttr = 0.0, set(), 0, 1.0
        for w in seq:
            count += 1
            types.add(w)
            ttr = len(types) / count
            if ttr <= threshold:
                f += 1
                types, count, ttr = set(), 0, 1.0
        return f + (1 - ttr) / (1 - threshold)

    fw, bw = factors(words), factors(words[::-1])
    if fw <= 0 or bw <= 0:
        return None
    return (len(words) / fw + len(words) / bw) / 2


def ref_syllables(word: str) -> int:
    w = word.lower()
    for q in ("'", "’"):
        if q in w:
            w = w[:w.index(q)]
    groups, prev = 0, False
    for ch in w:
        v = ch in VOWELS
        if v and not prev:
            groups += 1
        prev = v
    silent = 0
    if len(w) >= 3 and w.endswith("e"):
        before = w[-2]
        if before == "l" and w[-3] in VOWELS:
            silent = 1  # whale, mile
        elif before.isascii() and before.isalpha() and before not in VOWELS and before != "l" \
                and any(c in VOWELS for c in w[:-2]):
            silent = 1  # make, there
    return max(1, groups - silent)


def ref_flesch(text: str) -> float | None:
    words = ref_words(text)
    if not words:
        return None
    sentences = max(1, len(re.findall(r"[.!?]+(?:\s|$)", text)))
    syl = sum(ref_syllables(w) for w in words)
    return 206.835 - 1.015 * len(words) / sentences - 84.6 * syl / len(words)


def _real_texts(corpora: Path, n: int = 150) -> list[str]:
    out = []
    for name in ("wiki_en", "wiki_fr", "python_docs"):
        out += pl.read_parquet(corpora / f"{name}.parquet", columns=["text"]).head(n).get_column("text").to_list()
    return out


def test_flesch_closed_form_on_hand_counted_sentences() -> None:
    cases = {
        # 6 words, 1 sentence, 6 syllables
        "The cat sat on the mat.": 206.835 - 1.015 * 6 - 84.6 * 1.0,
        # whale(1) tables(2) make(1) people(2) argue(2) don't(1) they(1) yes(1): 8 words, 11 syllables, 3 sentences
        "Whale tables make people argue. Don't they? Yes!": 206.835 - 1.015 * 8 / 3 - 84.6 * 11 / 8,
        # encyclopedia: e-ncy-clo-pe-di-a -> groups e, y, o, e, ia = 5; is(1) a(1) big(1) book(1)
        "An encyclopedia is a big book": 206.835 - 1.015 * 6 - 84.6 * 10 / 6,
    }
    got = flesch_scores(pl.Series(list(cases))).to_list()
    assert got == pytest.approx(list(cases.values()), abs=1e-9)


def test_flesch_matches_reference_on_real_text(corpora: Path) -> None:
    texts = _real_texts(corpora)
    got = flesch_scores(pl.Series(texts)).to_list()
    want = [ref_flesch(t) for t in texts]
    assert got == pytest.approx(want, abs=1e-9)


def test_mtld_matches_reference_on_real_text(corpora: Path) -> None:
    texts = _real_texts(corpora)
    got = mtld_scores(pl.Series(texts), min_words=1)
    want = [ref_mtld(t) for t in texts]
    assert [g is None for g in got] == [w is None for w in want]
    assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None], rel=1e-12)
    # a text that repeats one sentence has low diversity; distinct words only give no factor
    rep = mtld_scores(pl.Series(["the cat sat on the mat " * 20, "alpha beta gamma delta epsilon zeta eta theta iota kappa"]))
    assert rep[0] is not None and rep[0] < 10 and rep[1] is None


def test_compression_ratio_matches_zlib(corpora: Path) -> None:
    texts = _real_texts(corpora, 30) + ["", "aaaa" * 1000]
    got = compression_ratios(texts)
    want = [len(t.encode()) / len(zlib.compress(t.encode(), 6)) if t else None for t in texts]
    assert got == want
    assert got[-1] > 50  # repetitive text compresses far better
    import zstandard

    z = compression_ratios(texts[:3], "zstd", 3)
    assert z == [len(t.encode()) / len(zstandard.ZstdCompressor(level=3).compress(t.encode())) for t in texts[:3]]


def test_stage_contract(corpora: Path) -> None:
    assert stage_class("difficulty") is Difficulty
    st = Difficulty({"mtld_min_words": 10})
    batch = pl.DataFrame({"id": ["a", "b", "c"], "text": ["", "Short text here.", _real_texts(corpora, 1)[0]]})
    out = st.transform(batch)
    assert out.columns == list(st.writes()) and out.height == 3
    assert out.row(0) == (None, None, None)
    assert out["mtld"][1] is None and out["flesch_reading_ease"][1] is not None and out["mtld"][2] is not None
    assert st.key("difficulty").startswith("difficulty@1-")
