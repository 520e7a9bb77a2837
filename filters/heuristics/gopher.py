"""Gopher's heuristic filters (Rae et al. 2021, "Scaling Language Models", appendix A), vectorised.

Two stages, each at parity with datatrove's filter of the same name and defaults:

- ``gopher_quality`` (datatrove ``GopherQualityFilter``): word count, mean word length, symbol and
  bullet/ellipsis ratios, alphabetic words, stop words.
- ``gopher_repetition`` (datatrove ``GopherRepetitionFilter``): duplicated lines and paragraphs, the
  most frequent n-gram, and characters inside duplicated n-grams.

Both write ``keep`` and ``reason`` (the first failing rule in datatrove's order, null when kept).
"""
from __future__ import annotations

import bisect

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import Stage, register_stage
from filters.heuristics.common import (
    INLINE_SPACE,
    KEEP_REASON,
    PUNCTUATION_SET,
    char_class,
    duplicates,
    first_failure,
    py_strip,
    splitlines_count,
    splitlines_text,
    stats_frame,
    verdict,
    with_lang,
)
from filters.heuristics.words import STOP_WORDS, word_table

_SYMBOL_CLASS = char_class(PUNCTUATION_SET)


def _on(value: float | int | None) -> bool:
    """datatrove switches a rule off with any false value (None or 0)."""
    return bool(value)


# ==================================================================================================
# Gopher quality


class GopherQualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: dict[str, list[str]] | None = Field(
        default=None, description="stop words per language key (en/fr/es/xx); None = the built-in lists"
    )


@register_stage
class GopherQuality(Stage):
    """Gopher's quality rules, in datatrove's order; each is off when its parameter is None or 0.

    Words are the language's words (``words.py``); a "non-symbol word" has at least one character
    outside the symbol set (``common.PUNCTUATION_SET``). Defaults (datatrove's):

    ===========================  ========  ==================================================
    parameter                    default   drops the document (reason) when
    ===========================  ========  ==================================================
    min_doc_words                50        non-symbol words < 50 (``gopher_short_doc``)
    max_doc_words                100000    non-symbol words > 100000 (``gopher_long_doc``)
    min_avg_word_length          3         mean length of non-symbol words < 3
                                           (``gopher_below_avg_threshold``)
    max_avg_word_length          10        ... > 10 (``gopher_above_avg_threshold``)
    max_symbol_word_ratio        0.1       "#" per word > 0.1 (``gopher_too_many_hashes``), then
                                           ("..." + "…") per word > 0.1 (``gopher_too_many_ellipsis``)
    max_bullet_lines_ratio       0.9       share of lines starting (after spaces) with "•" or "-"
                                           > 0.9 (``gopher_too_many_bullets``)
    max_ellipsis_lines_ratio     0.3       share of lines ending (before spaces) with "..." or "…"
                                           > 0.3 (``gopher_too_many_end_ellipsis``)
    max_non_alpha_words_ratio    0.8       share of words with a letter < 0.8
                                           (``gopher_below_alpha_threshold``)
    min_stop_words               2         fewer than 2 distinct stop words of the document's
                                           language (``gopher_enough_stop_words``; exact,
                                           case-sensitive match)
    stop_words                   built-in  ``words.STOP_WORDS``: Gopher's English list and
                                           lists of the same kind for fr and es; a language
                                           without a list skips the stop-word rule
    ===========================  ========  ==================================================

    Lines are ``str.splitlines()`` lines. A ratio over zero words or zero lines counts as 0 (datatrove
    divides by zero there; with the defaults such a document has already failed ``gopher_short_doc``).
    """

    kind = "gopher_quality"
    version = "1"
    needs = ("text", "lang")
    Params = GopherQualityParams

    def writes(self) -> dict[str, pa.DataType]:
        return dict(KEEP_REASON)

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: GopherQualityParams = self.params  # type: ignore[assignment]
        docs = with_lang(batch)
        stop_lists = STOP_WORDS if p.stop_words is None else p.stop_words
        words = word_table(docs)
        lang_of_row = docs.select(pl.col("lang")).with_row_index("row")
        stop_pairs = pl.DataFrame(
            [(lang, w) for lang, ws in stop_lists.items() for w in ws],
            schema={"lang": pl.Utf8, "word": pl.Utf8},
            orient="row",
        ).unique()
        w = pl.col("word")
        nonsym = w.str.contains(f"[^{_SYMBOL_CLASS}]")
        per_row = words.group_by("row").agg(
            n_words=pl.len(),
            n_nonsym=nonsym.sum(),
            nonsym_chars=w.str.len_chars().filter(nonsym).sum(),
            n_alpha=w.str.contains(r"\p{L}").sum(),
        )
        stops = (
            words.join(lang_of_row, on="row")
            .join(stop_pairs, on=["lang", "word"], how="semi")
            .group_by("row")
            .agg(n_stop=pl.col("word").n_unique())
        )
        stats = (
            stats_frame(docs.height)
            .join(per_row, on="row", how="left")
            .join(stops, on="row", how="left")
            .fill_null(0)
        )
        text = pl.col("text")
        lines = splitlines_text(text)
        docs = pl.concat(
            [
                docs,
                stats.drop("row"),
                docs.select(
                    n_hash=text.str.count_matches("#", literal=True),
                    n_ellipsis=text.str.count_matches("...", literal=True) + text.str.count_matches("…", literal=True),
                    n_lines=splitlines_count(text),
                    n_bullet=lines.str.count_matches(f"(?m)^{INLINE_SPACE}*[•\\-]"),
                    n_end_ellipsis=lines.str.count_matches(f"(?m)(?:\\.\\.\\.|…){INLINE_SPACE}*$"),
                ),
            ],
            how="horizontal",
        )
        n_words, n_nonsym = pl.col("n_words"), pl.col("n_nonsym")

        def per_word(x: pl.Expr) -> pl.Expr:
            return pl.when(n_words > 0).then(x / n_words).otherwise(0.0)

        def per_line(x: pl.Expr) -> pl.Expr:
            return pl.when(pl.col("n_lines") > 0).then(x / pl.col("n_lines")).otherwise(0.0)

        mean_len = pl.when(n_nonsym > 0).then(pl.col("nonsym_chars") / n_nonsym).otherwise(float("nan"))
        has_stop_list = pl.col("lang").is_in([k for k, v in stop_lists.items() if v])
        reason = first_failure(
            [
                ("gopher_short_doc", n_nonsym < p.min_doc_words if _on(p.min_doc_words) else None),
                ("gopher_long_doc", n_nonsym > p.max_doc_words if _on(p.max_doc_words) else None),
                ("gopher_below_avg_threshold", mean_len < p.min_avg_word_length if _on(p.min_avg_word_length) else None),
                ("gopher_above_avg_threshold", mean_len > p.max_avg_word_length if _on(p.max_avg_word_length) else None),
                (
                    "gopher_too_many_hashes",
                    per_word(pl.col("n_hash")) > p.max_symbol_word_ratio if _on(p.max_symbol_word_ratio) else None,
                ),
                (
                    "gopher_too_many_ellipsis",
                    per_word(pl.col("n_ellipsis")) > p.max_symbol_word_ratio if _on(p.max_symbol_word_ratio) else None,
                ),
                (
                    "gopher_too_many_bullets",
                    per_line(pl.col("n_bullet")) > p.max_bullet_lines_ratio if _on(p.max_bullet_lines_ratio) else None,
                ),
                (
                    "gopher_too_many_end_ellipsis",
                    per_line(pl.col("n_end_ellipsis")) > p.max_ellipsis_lines_ratio
                    if _on(p.max_ellipsis_lines_ratio)
                    else None,
                ),
                (
                    "gopher_below_alpha_threshold",
                    (n_words > 0) & (pl.col("n_alpha") / n_words < p.max_non_alpha_words_ratio)
                    if _on(p.max_non_alpha_words_ratio)
                    else None,
                ),
                (
                    "gopher_enough_stop_words",
                    has_stop_list & (pl.col("n_stop") < p.min_stop_words) if _on(p.min_stop_words) else None,
                ),
            ]
        )
        return docs.select(verdict(reason))


# ==================================================================================================
# Gopher repetition


class GopherRepetitionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]


# odd 64-bit multiplier of the polynomial n-gram hash
_K = np.uint64(0x9E3779B97F4A7C15)


@register_stage
class GopherRepetition(Stage):
    """Gopher's repetition rules (table A1), in datatrove's order; a fraction rule is off when None/0.

    All character fractions are over ``len(text)``. Defaults (datatrove's):

    ===================  =====================================  ==========================================
    parameter            default                                drops the document (reason) when
    ===================  =====================================  ==========================================
    (always)                                                    the text is "" (``gopher_rep_empty``)
    dup_para_frac        0.3                                    share of paragraphs (split on 2+ newlines
                                                                after ``strip()``) equal to an earlier one
                                                                > 0.3 (``gopher_rep_dup_para_frac``)
    dup_para_char_frac   0.2                                    their characters > 0.2
                                                                (``gopher_rep_dup_para_char_frac``)
    dup_line_frac        0.3                                    same for lines (split on runs of "\\n")
                                                                (``gopher_rep_dup_line_frac``)
    dup_line_char_frac   0.2                                    (``gopher_rep_dup_line_char_frac``)
    top_n_grams          (2, .20), (3, .18), (4, .16)           the most frequent n-gram (first seen wins
                                                                a tie) times its length with spaces > frac
                                                                (``gopher_rep_top_{n}_gram``)
    dup_n_grams          (5, .15), (6, .14), (7, .13),          characters (words joined without spaces)
                         (8, .12), (9, .11), (10, .10)          of n-grams repeating an earlier one, left
                                                                to right, jumping over each repeat > frac
                                                                (``gopher_rep_duplicated_{n}_n_grams``)
    ===================  =====================================  ==========================================

    How it is computed: line and paragraph duplicates are Polars group operations; n-grams are 64-bit
    polynomial hashes of word hashes (NumPy), counted with Polars. datatrove's duplicated-n-gram count
    is a left-to-right scan that skips n words after each repeat, so it is path-dependent. We first
    bound it from above, vectorised (characters of words covered by any repeated n-gram); only
    documents whose bound crosses the threshold get the exact scan, which is a Python loop over that
    document's repeated positions (``benchmarks/filters.py`` reports how many documents needed it).
    An n-gram is identified by its words; datatrove identifies one by the words joined without spaces,
    which only differs when two different splits concatenate to the same string.
    """

    kind = "gopher_repetition"
    version = "1"
    needs = ("text", "lang")
    Params = GopherRepetitionParams

    def writes(self) -> dict[str, pa.DataType]:
        return dict(KEEP_REASON)

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: GopherRepetitionParams = self.params  # type: ignore[assignment]
        docs = with_lang(batch).with_row_index("row")
        text = pl.col("text")
        n_chars = docs.select(text.str.len_chars().cast(pl.Float64))["text"].to_numpy()
        reason = np.full(docs.height, None, dtype=object)

        # ---- paragraphs and lines
        paras = docs.select(
            "row", item=py_strip(text).str.extract_all(r"[^\n]+(?:\n[^\n]+)*")
        ).explode("item").drop_nulls("item")
        par = stats_frame(docs.height).join(duplicates(paras), on="row", how="left").fill_null(0).sort("row")
        n_par = np.maximum(par["n_items"].to_numpy(), 1)  # a blank text is one empty paragraph
        lines = docs.select("row", item=text.str.extract_all(r"[^\n]+")).explode("item").drop_nulls("item")
        lin = stats_frame(docs.height).join(duplicates(lines), on="row", how="left").fill_null(0).sort("row")
        edges = docs.select(
            starts=text.str.starts_with("\n").cast(pl.Int64), ends=text.str.ends_with("\n").cast(pl.Int64)
        )
        starts, ends = edges["starts"].to_numpy(), edges["ends"].to_numpy()
        # re.split("\n+") also yields "" before a leading and after a trailing newline
        n_lin = lin["n_items"].to_numpy() + starts + ends
        dup_lin = lin["dup_items"].to_numpy() + (starts & ends)
        with np.errstate(divide="ignore", invalid="ignore"):
            rules: list[tuple[str, np.ndarray]] = [("gopher_rep_empty", n_chars == 0)]
            if _on(p.dup_para_frac):
                rules.append(("gopher_rep_dup_para_frac", par["dup_items"].to_numpy() / n_par > p.dup_para_frac))
            if _on(p.dup_para_char_frac):
                rules.append(
                    ("gopher_rep_dup_para_char_frac", par["dup_chars"].to_numpy() / n_chars > p.dup_para_char_frac)
                )
            if _on(p.dup_line_frac):
                rules.append(("gopher_rep_dup_line_frac", dup_lin / np.maximum(n_lin, 1) > p.dup_line_frac))
            if _on(p.dup_line_char_frac):
                rules.append(
                    ("gopher_rep_dup_line_char_frac", lin["dup_chars"].to_numpy() / n_chars > p.dup_line_char_frac)
                )
        for name, failed in rules:
            reason[(reason == None) & failed] = name  # noqa: E711 - elementwise on an object array

        # ---- n-grams, only for documents still kept
        alive = np.flatnonzero(reason == None)  # noqa: E711
        if alive.size and (p.top_n_grams or p.dup_n_grams):
            sub = docs[alive.tolist()].drop("row")
            words = word_table(sub)
            self._ngram_rules(p, words, n_chars[alive], reason, alive)
        return pl.DataFrame({"reason": pl.Series(reason.tolist(), dtype=pl.Utf8)}).select(verdict(pl.col("reason")))

    @staticmethod
    def _ngram_rules(
        p: GopherRepetitionParams, words: pl.DataFrame, n_chars: np.ndarray, reason: np.ndarray, alive: np.ndarray
    ) -> None:
        """Fill ``reason[alive[r]]`` for the n-gram rules; ``words`` rows index ``alive``."""
        n_docs = alive.size
        row = words["row"].to_numpy().astype(np.int64)
        n = row.size
        if n == 0:
            return
        h = words["word"].hash(seed=17).to_numpy()
        wlen = words["word"].str.len_chars().to_numpy().astype(np.int64)
        cum_len = np.concatenate([[0], np.cumsum(wlen)])
        pos = np.arange(n)
        local_reason = np.full(n_docs, None, dtype=object)

        hashes: dict[int, np.ndarray] = {1: h.copy()}

        def ngram_hash(k: int) -> np.ndarray:
            # H_k[i] = H_{k-1}[i] * K + h[i+k-1]; defined for i < n-k+1 (same row checked by caller)
            if k not in hashes:
                prev = ngram_hash(k - 1)
                hk = prev[: n - k + 1] * _K + h[k - 1 :]
                hashes[k] = hk
            return hashes[k]

        def valid(k: int) -> np.ndarray:
            m = n - k + 1
            if m <= 0:
                return np.zeros(0, dtype=bool)
            return row[:m] == row[k - 1 :]

        for k, frac in p.top_n_grams:
            todo = local_reason == None  # noqa: E711
            ok = valid(k)
            if not ok.any():
                continue
            m = ok.size
            idx = pos[:m][ok]
            frame = pl.DataFrame(
                {
                    "row": row[:m][ok],
                    "h": ngram_hash(k)[ok],
                    "pos": idx,
                    "len": (cum_len[idx + k] - cum_len[idx] + (k - 1)),
                }
            )
            top = (
                frame.group_by("row", "h")
                .agg(cnt=pl.len(), first=pl.col("pos").min(), len=pl.col("len").first())
                .sort(["row", "cnt", "first"], descending=[False, True, False])
                .group_by("row", maintain_order=True)
                .first()
            )
            r = top["row"].to_numpy()
            score = top["cnt"].to_numpy() * top["len"].to_numpy() / n_chars[r]
            failed = np.zeros(n_docs, dtype=bool)
            failed[r] = score > frac
            local_reason[todo & failed] = f"gopher_rep_top_{k}_gram"

        for k, frac in p.dup_n_grams:
            todo = local_reason == None  # noqa: E711
            if not todo.any():
                break
            ok = valid(k)
            if not ok.any():
                continue
            m = ok.size
            hk = ngram_hash(k)
            # keyed by row too, so equal n-grams of different documents stay apart
            key = np.where(ok, hk ^ (row[:m].astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)), 0)
            first = pl.Series(key).is_first_distinct().to_numpy()
            rep = ok & ~first
            # upper bound: characters of words covered by any repeated n-gram
            c = np.concatenate([[0], np.cumsum(rep)])
            j = np.arange(n)
            lo = np.clip(j - k + 1, 0, m)
            hi = np.clip(j + 1, 0, m)
            covered = (c[hi] - c[lo]) > 0
            bound = np.bincount(row, weights=wlen * covered, minlength=n_docs)
            cand = np.flatnonzero(todo & (bound / n_chars > frac))
            if cand.size == 0:
                continue
            starts = np.searchsorted(row, cand, side="left")
            stops = np.searchsorted(row, cand, side="right")
            gram_chars = cum_len[np.arange(m) + k] - cum_len[np.arange(m)]
            for d, a, b in zip(cand.tolist(), starts.tolist(), stops.tolist(), strict=True):
                count = b - a - k + 1
                if count <= 0:
                    continue
                chars = _greedy_repeated_chars(
                    hk[a : a + count], rep[a : a + count], gram_chars[a : a + count], k
                )
                if chars / n_chars[d] > frac:
                    local_reason[d] = f"gopher_rep_duplicated_{k}_n_grams"
        hit = local_reason != None  # noqa: E711
        reason[alive[hit]] = local_reason[hit]


def _greedy_repeated_chars(hashes: np.ndarray, repeated: np.ndarray, chars: np.ndarray, n: int) -> int:
    """datatrove's ``find_all_duplicate`` for one document, on n-gram hashes.

    Left to right: an n-gram already *seen* adds its characters and jumps ``n`` words ahead; any
    other is marked seen and the scan moves one word. Positions skipped by a jump are never marked
    seen, so the result depends on the path. ``repeated`` marks n-grams equal to *any* earlier one: the
    others can never count, so the loop jumps straight from one repeated position to the next, adding
    the n-grams in between to the seen set in bulk.
    """
    cand = np.flatnonzero(repeated).tolist()
    hs = hashes.tolist()
    seen: set[int] = set()
    total = 0
    idx = 0
    k = 0
    while True:
        k = bisect.bisect_left(cand, idx, k)
        if k == len(cand):
            return total
        j = cand[k]
        seen.update(hs[idx:j])
        if hs[j] in seen:
            total += int(chars[j])
            idx = j + n
        else:
            seen.add(hs[j])
            idx = j + 1
