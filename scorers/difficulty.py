"""``difficulty``: cheap difficulty signals per document, for curriculum ordering.

Writes three columns (null where a signal is undefined):

- ``compression_ratio``: UTF-8 bytes / compressed bytes, with zlib (default, level 6) or zstd
  (``codec: zstd``, level 3). Repetitive, boilerplate text compresses well (high ratio);
  dense, varied text does not. Null for empty text.
- ``mtld``: the Measure of Textual Lexical Diversity (McCarthy & Jarvis, 2010). Words are read
  left to right while the running type/token ratio of the current segment stays above the
  threshold (0.72); each time it falls to or below it, a factor is counted and a new segment
  starts; the last, unfinished segment adds (1 - TTR) / (1 - 0.72) of a factor. MTLD is the
  number of words divided by the factors, averaged over a forward and a backward pass. Words:
  lower-cased runs of Unicode letters (category L; not digits, not combining marks), with
  internal apostrophes (``don't`` is one word). Null for
  documents under ``mtld_min_words`` words (default 10) or with no factor at all (every word
  distinct, so the measure is unbounded).
- ``flesch_reading_ease``: 206.835 - 1.015 * words / sentences - 84.6 * syllables / words.
  Sentences: runs of ``.``, ``!`` or ``?`` followed by whitespace or the end (at least one).
  Syllables, a heuristic for English: per word (cut at its first apostrophe), the
  number of groups of consecutive vowels (a e i o u y), minus one for a silent final ``e``
  (a consonant other than ``l`` then ``e`` with a vowel earlier, as in "make", or a vowel then
  ``le``, as in "whale"), at least one. It is an English formula: accented vowels are not
  vowels to it, and on other languages the score is only comparable within that language.
  Null when the document has no words.

Vectorised with Polars (word extraction, syllables, sentence counts, the previous/next
occurrence of each word for MTLD); what stays per document is the compressor call and MTLD's
segment walk, done on NumPy slices one segment at a time.
"""
from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import Stage, register_stage

WORD = r"\p{L}+(?:['’]\p{L}+)*"
SENTENCE_END = r"[.!?]+(?:\s|$)"
_SUFFIX = r"['’].*$"
_SILENT_E = r"(?:[aeiouy].*[b-df-hj-km-np-tv-xz]e|[aeiouy]le)$"


class DifficultyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codec: Literal["zlib", "zstd"] = "zlib"
    level: int | None = Field(default=None, ge=1, le=22)
    mtld_threshold: float = Field(default=0.72, gt=0, lt=1)
    mtld_min_words: int = Field(default=10, ge=1)


def compression_ratios(texts: list[str | None], codec: str = "zlib", level: int | None = None) -> list[float | None]:
    """UTF-8 length / compressed length per text (None for empty or null)."""
    if codec == "zlib":
        lvl = 6 if level is None else min(level, 9)

        def comp(b: bytes) -> int:
            return len(zlib.compress(b, lvl))
    else:
        import zstandard

        cctx = zstandard.ZstdCompressor(level=3 if level is None else level)

        def comp(b: bytes) -> int:
            return len(cctx.compress(b))
    out: list[float | None] = []
    for t in texts:
        if not t:
            out.append(None)
            continue
        b = t.encode("utf-8")
        out.append(len(b) / comp(b))
    return out


def _mtld_one_way(prev: np.ndarray, threshold: float) -> float:
    """Factors of one pass; ``prev[i]`` is the position of the previous occurrence of word i (-1)."""
    n = len(prev)
    s, factors = 0, 0.0
    while s < n:
        width = 64
        while True:
            e = min(n, s + width)
            types = np.cumsum(prev[s:e] < s)
            ttr = types / np.arange(1, e - s + 1)
            hit = np.flatnonzero(ttr <= threshold)
            if hit.size:
                factors += 1.0
                s += int(hit[0]) + 1
                break
            if e == n:
                factors += (1.0 - float(ttr[-1])) / (1.0 - threshold)
                s = n
                break
            width *= 4
    return factors


def _word_table(texts: pl.Series) -> pl.DataFrame:
    """One row per word: doc index, position within the doc, the lower-cased word."""
    return (pl.DataFrame({"w": texts.fill_null("").str.to_lowercase().str.extract_all(WORD)})
            .with_row_index("doc")
            .explode("w")
            .drop_nulls("w")
            .with_columns(pl.int_range(pl.len()).over("doc").alias("pos")))


def _neighbours(words: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Position of the previous and the next occurrence of each word in its document (-1: none).

    A sort by (doc, word, pos) puts the occurrences of a word side by side; neighbours in that
    order are the previous/next occurrences (a window over string keys is much slower)."""
    ranked = words.with_row_index("_i").sort(["doc", "w", "pos"])
    i = ranked.get_column("_i").to_numpy()
    pos = ranked.get_column("pos").to_numpy().astype(np.int64)
    same = np.zeros(len(i), dtype=bool)
    if len(i) > 1:
        d = ranked.get_column("doc").to_numpy()
        w = ranked.get_column("w")
        same[1:] = (d[1:] == d[:-1]) & (w.slice(1) == w.slice(0, len(w) - 1)).to_numpy()
    prev_sorted = np.where(same, np.concatenate([[-1], pos[:-1]]), -1)
    next_sorted = np.where(np.concatenate([same[1:], [False]]), np.concatenate([pos[1:], [-1]]), -1)
    prev = np.empty(len(i), dtype=np.int64)
    nxt = np.empty(len(i), dtype=np.int64)
    prev[i] = prev_sorted
    nxt[i] = next_sorted
    return prev, nxt


def mtld_scores(texts: pl.Series, threshold: float = 0.72, min_words: int = 10) -> list[float | None]:
    """MTLD per text (see the module docstring); None where undefined."""
    n_docs = len(texts)
    words = _word_table(texts)
    out: list[float | None] = [None] * n_docs
    if words.height == 0:
        return out
    doc = words.get_column("doc").to_numpy()
    prev, nxt = _neighbours(words)
    bounds = np.flatnonzero(np.diff(doc)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(doc)]])
    for a, b in zip(starts, ends):
        n = int(b - a)
        if n < min_words:
            continue
        fwd = _mtld_one_way(prev[a:b], threshold)
        nx = nxt[a:b][::-1]
        bwd = _mtld_one_way(np.where(nx < 0, -1, n - 1 - nx), threshold)
        if fwd <= 0 or bwd <= 0:
            continue
        out[int(doc[a])] = (n / fwd + n / bwd) / 2.0
    return out


def syllables_expr(word: pl.Expr) -> pl.Expr:
    """Heuristic English syllable count of a lower-cased word (see the module docstring)."""
    base = word.str.replace(_SUFFIX, "")
    groups = base.str.count_matches(r"[aeiouy]+").cast(pl.Int64)
    silent = base.str.contains(_SILENT_E).cast(pl.Int64)
    return pl.max_horizontal(groups - silent, pl.lit(1, pl.Int64))


def flesch_scores(texts: pl.Series) -> pl.Series:
    """Flesch reading ease per text (null when a text has no words)."""
    words = _word_table(texts)
    per_doc = (words.group_by("doc").agg(pl.len().alias("n_words"), syllables_expr(pl.col("w")).sum().alias("n_syl")))
    base = pl.DataFrame({"text": texts.fill_null("")}).with_row_index("doc").with_columns(
        pl.max_horizontal(pl.col("text").str.count_matches(SENTENCE_END), pl.lit(1)).cast(pl.Float64).alias("n_sent"))
    df = base.join(per_doc, on="doc", how="left", maintain_order="left")
    w = pl.col("n_words").cast(pl.Float64)
    score = pl.when(w > 0).then(206.835 - 1.015 * (w / pl.col("n_sent")) - 84.6 * (pl.col("n_syl") / w))
    return df.select(score.alias("flesch_reading_ease")).to_series()


@register_stage
class Difficulty(Stage):
    kind = "difficulty"
    version = "1"
    needs = ("text",)
    Params = DifficultyParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"compression_ratio": pa.float64(), "mtld": pa.float64(), "flesch_reading_ease": pa.float64()}

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: DifficultyParams = self.params  # type: ignore[assignment]
        text = batch.get_column("text")
        return pl.DataFrame({
            "compression_ratio": pl.Series(compression_ratios(text.to_list(), p.codec, p.level), dtype=pl.Float64),
            "mtld": pl.Series(mtld_scores(text, p.mtld_threshold, p.mtld_min_words), dtype=pl.Float64),
            "flesch_reading_ease": flesch_scores(text),
        })
