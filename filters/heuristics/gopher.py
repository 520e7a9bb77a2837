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
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import Stage, StageContext, register_stage
from filters.heuristics import chunking
from filters.heuristics.chunking import item_stats
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
from filters.heuristics.words import STOP_WORDS, ChunkTable, chunk_table, warm_up

_SYMBOL_CLASS = char_class(PUNCTUATION_SET)

#: Counters of the exact duplicated-n-gram scans (benchmarks read them; results never depend on them).
SCAN_STATS: dict[str, float] = {"docs": 0, "seconds": 0.0}


def _on(value: float | int | None) -> bool:
    """datatrove switches a rule off with any false value (None or 0)."""
    return bool(value)


# ==================================================================================================
# Gopher quality


class GopherQualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    min_doc_words: int | None = 50
    """Fewer non-symbol words: dropped (``gopher_short_doc``). Web-crawl default: drops 21% of English
    Wikipedia summaries (median 73 words); set 10-20 for short encyclopedic or Q&A text."""
    max_doc_words: int | None = 100_000
    """More non-symbol words: dropped (``gopher_long_doc``)."""
    min_avg_word_length: float | None = 3
    """Mean word length below this: dropped (``gopher_below_avg_threshold``)."""
    max_avg_word_length: float | None = 10
    """Mean word length above this: dropped (``gopher_above_avg_threshold``)."""
    max_symbol_word_ratio: float | None = 0.1
    """"#" per word, then "..." per word, above this: dropped (``gopher_too_many_hashes`` / ``_ellipsis``)."""
    max_bullet_lines_ratio: float | None = 0.9
    """Share of lines starting with a bullet above this: dropped (``gopher_too_many_bullets``)."""
    max_ellipsis_lines_ratio: float | None = 0.3
    """Share of lines ending with an ellipsis above this: dropped (``gopher_too_many_end_ellipsis``)."""
    max_non_alpha_words_ratio: float | None = 0.8
    """Share of words with a letter below this: dropped (``gopher_below_alpha_threshold``). Drops
    93% of the Python docs (code, tables) and 6% of Wikipedia summaries (dates, figures)."""
    min_stop_words: int | None = 2
    """Fewer distinct stop words of the document's language: dropped (``gopher_enough_stop_words``)."""
    stop_words: dict[str, list[str]] | None = Field(default=None)
    """Stop words per language key (en/fr/es/xx); null: the built-in lists (no list: rule skipped)."""


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

    def setup(self, ctx: StageContext) -> None:
        warm_up()

    def writes(self) -> dict[str, pa.DataType]:
        return dict(KEEP_REASON)

    @staticmethod
    def _word_stats(ct: ChunkTable, stop_lists: dict[str, list[str]] | dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        """Per-row word counts, computed once per distinct chunk and summed over occurrences."""
        toks = ct.tokens
        nonsym = toks.str.contains(f"[^{_SYMBOL_CLASS}]").to_numpy()
        alpha = toks.str.contains(r"\p{L}").to_numpy()
        tlen = toks.str.len_chars().to_numpy().astype(np.float64)
        n_stop = np.zeros(ct.n_rows, dtype=np.int64)
        pairs = pl.DataFrame(
            [(lang, w) for lang, ws in stop_lists.items() for w in ws],
            schema={"lang": pl.Utf8, "word": pl.Utf8},
            orient="row",
        ).unique()
        if pairs.height and toks.len():
            tok_frame = pl.DataFrame(
                {"chunk": ct.token_chunk, "word": toks, "lang": ct.uniq["lang"].gather(ct.token_chunk)}
            )
            chunk_stops = tok_frame.join(pairs, on=["lang", "word"], how="semi").select("chunk", "word").unique()
            if chunk_stops.height:
                has = np.zeros(ct.uniq.height, dtype=bool)
                has[chunk_stops["chunk"].to_numpy()] = True
                m = has[ct.code]
                occ = pl.DataFrame({"row": ct.row[m], "chunk": ct.code[m]})
                per_row = occ.join(chunk_stops, on="chunk").group_by("row").agg(n=pl.col("word").n_unique())
                n_stop[per_row["row"].to_numpy()] = per_row["n"].to_numpy()
        return {
            "n_words": ct.row_sum(ct.n_tokens.astype(np.float64)).astype(np.int64),
            "n_nonsym": ct.row_sum(ct.chunk_sum(nonsym.astype(np.float64))).astype(np.int64),
            "nonsym_chars": ct.row_sum(ct.chunk_sum(tlen * nonsym)).astype(np.int64),
            "n_alpha": ct.row_sum(ct.chunk_sum(alpha.astype(np.float64))).astype(np.int64),
            "n_stop": n_stop,
        }

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: GopherQualityParams = self.params  # type: ignore[assignment]
        docs = with_lang(batch)
        stop_lists = STOP_WORDS if p.stop_words is None else p.stop_words
        ct = chunk_table(docs)
        stats = pl.DataFrame(self._word_stats(ct, stop_lists))
        text = pl.col("text")
        lines = splitlines_text(text)
        docs = pl.concat(
            [
                docs,
                stats,
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
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    dup_line_frac: float | None = 0.3
    """Share of lines repeating an earlier line above this: dropped (``gopher_rep_dup_line_frac``)."""
    dup_para_frac: float | None = 0.3
    """Share of paragraphs repeating an earlier one above this: dropped (``gopher_rep_dup_para_frac``)."""
    dup_line_char_frac: float | None = 0.2
    """Characters in repeated lines above this share: dropped (``gopher_rep_dup_line_char_frac``)."""
    dup_para_char_frac: float | None = 0.2
    """Characters in repeated paragraphs above this share: dropped (``gopher_rep_dup_para_char_frac``)."""
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    """(n, share): the most frequent n-gram covering more characters: dropped (``gopher_rep_top_{n}_gram``).
    Short texts hit these by chance: 2.5% of Wikipedia summaries."""
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    """(n, share): characters in repeated n-grams above it: dropped (``gopher_rep_duplicated_{n}_n_grams``).
    Drops 26% of the Python docs (repeated code and signatures)."""


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

    How it is computed: line and paragraph duplicates are one pass of the compiled kernel
    (``csrc/chunks.c``); n-grams are 64-bit polynomial hashes of word hashes. With the kernel, each
    n-gram rule is one pass over the words of the documents still kept (``ngram_scan``: a hash table per
    document; the most frequent n-gram, and datatrove's left-to-right duplicated-n-gram scan, which skips
    n words after each repeat and so is path-dependent). Without it (no C compiler at install), NumPy
    and Polars count n-grams, the duplicated-n-gram count is first bounded from above, vectorised
    (characters of words covered by any repeated n-gram), and only documents whose bound crosses the
    threshold get the exact scan, a Python loop over their repeated positions. Both give the same
    verdicts (``tests/heuristics/test_chunking.py``).
    An n-gram is identified by its words; datatrove identifies one by the words joined without spaces,
    which only differs when two different splits concatenate to the same string.
    """

    kind = "gopher_repetition"
    version = "1"
    needs = ("text", "lang")
    Params = GopherRepetitionParams

    def setup(self, ctx: StageContext) -> None:
        warm_up()

    def writes(self) -> dict[str, pa.DataType]:
        return dict(KEEP_REASON)

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: GopherRepetitionParams = self.params  # type: ignore[assignment]
        docs = with_lang(batch).with_row_index("row")
        text = pl.col("text")
        n_chars = docs.select(text.str.len_chars().cast(pl.Float64))["text"].to_numpy()
        reason = np.full(docs.height, None, dtype=object)

        # ---- paragraphs and lines
        par = _item_stats(docs, paragraphs=True)
        n_par = np.maximum(par["n_items"], 1)  # a blank text is one empty paragraph
        lin = _item_stats(docs, paragraphs=False)
        edges = docs.select(
            starts=text.str.starts_with("\n").cast(pl.Int64), ends=text.str.ends_with("\n").cast(pl.Int64)
        )
        starts, ends = edges["starts"].to_numpy(), edges["ends"].to_numpy()
        # re.split("\n+") also yields "" before a leading and after a trailing newline
        n_lin = lin["n_items"] + starts + ends
        dup_lin = lin["dup_items"] + (starts & ends)
        with np.errstate(divide="ignore", invalid="ignore"):
            rules: list[tuple[str, np.ndarray]] = [("gopher_rep_empty", n_chars == 0)]
            if _on(p.dup_para_frac):
                rules.append(("gopher_rep_dup_para_frac", par["dup_items"] / n_par > p.dup_para_frac))
            if _on(p.dup_para_char_frac):
                rules.append(
                    ("gopher_rep_dup_para_char_frac", par["dup_chars"] / n_chars > p.dup_para_char_frac)
                )
            if _on(p.dup_line_frac):
                rules.append(("gopher_rep_dup_line_frac", dup_lin / np.maximum(n_lin, 1) > p.dup_line_frac))
            if _on(p.dup_line_char_frac):
                rules.append(
                    ("gopher_rep_dup_line_char_frac", lin["dup_chars"] / n_chars > p.dup_line_char_frac)
                )
        for name, failed in rules:
            reason[(reason == None) & failed] = name  # noqa: E711 - elementwise on an object array

        # ---- n-grams, only for documents still kept
        alive = np.flatnonzero(reason == None)  # noqa: E711
        if alive.size and (p.top_n_grams or p.dup_n_grams):
            sub = docs[alive.tolist()].drop("row")
            self._ngram_rules(p, chunk_table(sub), n_chars[alive], reason, alive)
        return pl.DataFrame({"reason": pl.Series(reason.tolist(), dtype=pl.Utf8)}).select(verdict(pl.col("reason")))

    @staticmethod
    def _ngram_rules(
        p: GopherRepetitionParams, ct: ChunkTable, n_chars: np.ndarray, reason: np.ndarray, alive: np.ndarray
    ) -> None:
        """Fill ``reason[alive[r]]`` for the n-gram rules; ``ct`` rows index ``alive``."""
        grams = _NGrams(ct)
        if grams.n == 0:
            return
        mod = chunking.ext()
        if mod is not None:
            _ngram_rules_native(mod, p, grams, n_chars, reason, alive)
            return
        local = np.full(alive.size, None, dtype=object)
        c1, top1, extra_chars = grams.word_type_stats()
        for k, frac in p.top_n_grams:
            todo = np.flatnonzero(local == None)  # noqa: E711
            if todo.size == 0:
                break
            # Every word of a k-gram seen c times occurs at least c times, so c x length is at most
            # k x the largest (count x length) of a word type, plus (k-1) x the top word count; a
            # k-gram seen once is the first one. Only documents over the threshold by that bound
            # are counted.
            bound = np.maximum(k * top1[todo] + (k - 1) * c1[todo], grams.first_gram_chars(k, todo))
            todo = todo[bound / n_chars[todo] > frac]
            if todo.size:
                score = grams.top_chars(k, todo) / n_chars[todo]
                local[todo[score > frac]] = f"gopher_rep_top_{k}_gram"
        if p.dup_n_grams:
            min_frac = min(f for _, f in p.dup_n_grams)
            # Words inside a repeated n-gram repeat an earlier occurrence of their type, and the scan
            # counts each word once at most: repeated word occurrences bound every n.
            todo = np.flatnonzero((local == None) & (extra_chars / n_chars > min_frac))  # noqa: E711
            # Words covered by a repeated n-gram are covered by a repeated (n-1)-gram too: the coverage
            # for n bounds every larger n, so a document leaves once it is under all later thresholds.
            for i, (k, frac) in enumerate(p.dup_n_grams):
                todo = todo[local[todo] == None]  # noqa: E711
                if todo.size == 0:
                    break
                covered, repeats = grams.covered_chars(k, todo)
                ratio = covered / n_chars[todo]
                t0 = time.perf_counter()
                for j in np.flatnonzero(ratio > frac).tolist():
                    d = int(todo[j])
                    SCAN_STATS["docs"] += 1
                    if grams.repeated_chars(k, todo, repeats, j) / n_chars[d] > frac:
                        local[d] = f"gopher_rep_duplicated_{k}_n_grams"
                SCAN_STATS["seconds"] += time.perf_counter() - t0
                later = [f for kk, f in p.dup_n_grams[i + 1 :] if kk >= k]
                if later and len(later) == len(p.dup_n_grams) - i - 1:
                    todo = todo[ratio > min(later)]
        hit = local != None  # noqa: E711
        reason[alive[hit]] = local[hit]


def _ngram_rules_native(
    mod: Any, p: GopherRepetitionParams, grams: _NGrams, n_chars: np.ndarray, reason: np.ndarray, alive: np.ndarray
) -> None:
    """The n-gram rules with the compiled kernel (``ngram_scan``): each rule's exact statistic for every
    document still kept, one pass over its words per rule (no bounds, no Python scan)."""
    local = np.full(alive.size, None, dtype=object)
    h = np.ascontiguousarray(grams.h, dtype=np.uint64)
    chars = np.ascontiguousarray(grams.wlen, dtype=np.int64)
    rules = [(k, frac, 0, f"gopher_rep_top_{k}_gram") for k, frac in p.top_n_grams]
    rules += [(k, frac, 1, f"gopher_rep_duplicated_{k}_n_grams") for k, frac in p.dup_n_grams]
    t0 = time.perf_counter()
    for k, frac, mode, name in rules:
        todo = np.flatnonzero(local == None)  # noqa: E711
        if todo.size == 0:
            break
        out = np.empty(todo.size, dtype=np.int64)
        starts = np.ascontiguousarray(grams.doc_start[todo], dtype=np.int64)
        ends = np.ascontiguousarray(grams.doc_start[todo + 1], dtype=np.int64)
        mod.ngram_scan(h, chars, starts, ends, int(k), mode, out)
        local[todo[out / n_chars[todo] > frac]] = name
        SCAN_STATS["docs"] += todo.size if mode == 1 else 0
    SCAN_STATS["seconds"] += time.perf_counter() - t0
    hit = local != None  # noqa: E711
    reason[alive[hit]] = local[hit]


def _item_stats(docs: pl.DataFrame, paragraphs: bool) -> dict[str, np.ndarray]:
    """Per text: ``n_items``, ``dup_items`` (equal to an earlier item of the same text) and
    ``dup_chars`` of its paragraphs (runs separated by 2+ newlines after ``str.strip()``) or lines
    (non-empty runs between newlines): the compiled kernel (``chunking.item_stats``), else Polars."""
    fast = item_stats(docs.get_column("text"), paragraphs)
    if fast is not None:
        return fast
    text = pl.col("text")
    if paragraphs:
        items = docs.select("row", item=py_strip(text).str.extract_all(r"[^\n]+(?:\n[^\n]+)*"))
    else:
        items = docs.select("row", item=text.str.extract_all(r"[^\n]+"))
    items = items.explode("item").drop_nulls("item")
    st = stats_frame(docs.height).join(duplicates(items), on="row", how="left").fill_null(0).sort("row")
    return {c: st[c].to_numpy().astype(np.int64) for c in ("n_items", "dup_items", "dup_chars")}


class _NGrams:
    """The words of a batch as arrays (NumPy), with per-document n-gram queries.

    An n-gram is a 64-bit polynomial hash of its words' 64-bit hashes, mixed with its document, so
    equal n-grams of one document share a key and different documents never do (up to hash collisions,
    about 2^-64 per pair).
    """

    def __init__(self, ct: ChunkTable):
        self.row = ct.word_row
        self.n = self.row.size
        self.n_docs = ct.n_rows
        if self.n == 0:
            return
        widx = ct.word_index
        self.h = ct.tokens.hash(seed=17).to_numpy()[widx]
        self.wlen = ct.tokens.str.len_chars().to_numpy().astype(np.int64)[widx]
        self.cum_len = np.concatenate([[0], np.cumsum(self.wlen)])
        self.doc_start = np.searchsorted(self.row, np.arange(self.n_docs + 1), side="left")
        self._hash: dict[int, np.ndarray] = {1: self.h}

    def _ngram_hash(self, k: int) -> np.ndarray:
        """H_k[i] = H_{k-1}[i] * K + h[i+k-1], for every i < n-k+1 (documents not checked)."""
        if k not in self._hash:
            prev = self._ngram_hash(k - 1)
            self._hash[k] = prev[: self.n - k + 1] * _K + self.h[k - 1 :]
        return self._hash[k]

    def _positions(self, k: int, docs: np.ndarray) -> np.ndarray:
        """Start positions of the k-grams of the given documents (all inside their document)."""
        starts = self.doc_start[docs]
        counts = np.maximum(self.doc_start[docs + 1] - starts - k + 1, 0)
        total = int(counts.sum())
        shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        return np.arange(total, dtype=np.int64) + shift

    def _doc_keys(self, k: int, pos: np.ndarray) -> np.ndarray:
        return self._ngram_hash(k)[pos] ^ (self.row[pos].astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93))

    def word_type_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per document: the largest word-type count, the largest (count x length) of a word type, and
        the characters of word occurrences that repeat an earlier one."""
        key = self._doc_keys(1, np.arange(self.n))
        types = (
            pl.DataFrame({"key": key, "pos": np.arange(self.n)})
            .group_by("key")
            .agg(first=pl.col("pos").first(), cnt=pl.len())
        )
        first = types["first"].to_numpy()
        cnt = types["cnt"].to_numpy().astype(np.int64)
        wlen = self.wlen[first]
        row = self.row[first]
        per_doc = (
            pl.DataFrame({"row": row, "cnt": cnt, "v": cnt * wlen, "extra": (cnt - 1) * wlen})
            .group_by("row")
            .agg(c1=pl.col("cnt").max(), top=pl.col("v").max(), extra=pl.col("extra").sum())
        )
        r = per_doc["row"].to_numpy()
        out = [np.zeros(self.n_docs, dtype=np.int64) for _ in range(3)]
        for arr, name in zip(out, ("c1", "top", "extra"), strict=True):
            arr[r] = per_doc[name].to_numpy()
        return out[0], out[1], out[2]

    def first_gram_chars(self, k: int, docs: np.ndarray) -> np.ndarray:
        """Length (words joined by spaces) of each document's first k-gram; 0 without one."""
        first_pos = self.doc_start[docs]
        has = self.doc_start[docs + 1] - first_pos >= k
        out = np.zeros(docs.size)
        out[has] = self.cum_len[first_pos[has] + k] - self.cum_len[first_pos[has]] + (k - 1)
        return out

    def top_chars(self, k: int, docs: np.ndarray) -> np.ndarray:
        """For each document: count x length (words joined by spaces) of its most frequent k-gram,
        the first seen winning ties (Counter.most_common); 0 when it has no k-gram."""
        out = np.zeros(docs.size)
        pos = self._positions(k, docs)
        if pos.size == 0:
            return out
        # when no k-gram repeats, the winner is the document's first k-gram (count 1)
        out = self.first_gram_chars(k, docs)
        frame = pl.DataFrame({"key": self._doc_keys(k, pos), "pos": pos})
        groups = frame.group_by("key").agg(first=pl.col("pos").min(), cnt=pl.len()).filter(pl.col("cnt") > 1)
        if groups.height == 0:
            return out
        first = groups["first"].to_numpy()
        groups = groups.with_columns(
            row=pl.Series(self.row[first]),
            len=pl.Series(self.cum_len[first + k] - self.cum_len[first] + (k - 1)),
        )
        # most frequent, then earliest first occurrence
        order = pl.col("cnt").cast(pl.Int64) * (1 << 32) - pl.col("first").cast(pl.Int64)
        best = groups.group_by("row").agg(
            cnt=pl.col("cnt").get(order.arg_max()), len=pl.col("len").get(order.arg_max())
        )
        slot = np.full(self.n_docs, -1, dtype=np.int64)
        slot[docs] = np.arange(docs.size)
        out[slot[best["row"].to_numpy()]] = best["cnt"].to_numpy() * best["len"].to_numpy()
        return out

    def _repeats(self, k: int, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The documents' k-gram start positions (concatenated), whether each equals an earlier k-gram
        of its document, and each document's slice of the two (offsets, len(docs)+1)."""
        starts = self.doc_start[docs]
        counts = np.maximum(self.doc_start[docs + 1] - starts - k + 1, 0)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        pos = self._positions(k, docs)
        rep = ~pl.Series(self._doc_keys(k, pos)).is_first_distinct().to_numpy()
        return pos, rep, offsets

    def covered_chars(self, k: int, docs: np.ndarray) -> tuple[np.ndarray, Any]:
        """Upper bound of datatrove's duplicated k-gram characters, per document: characters of the
        words covered by any k-gram equal to an earlier one of its document. Also returns the
        repeats (``_repeats``) for ``repeated_chars``."""
        pos, rep, offsets = repeats = self._repeats(k, docs)
        # local word coordinates: the documents' words, concatenated
        starts = self.doc_start[docs]
        n_words = self.doc_start[docs + 1] - starts
        woff = np.concatenate([[0], np.cumsum(n_words)])
        local_doc = np.repeat(np.arange(docs.size), offsets[1:] - offsets[:-1])
        local = pos - starts[local_doc] + woff[local_doc]
        hits = local[rep]
        diff = np.bincount(hits, minlength=woff[-1] + 1) - np.bincount(hits + k, minlength=woff[-1] + 1)
        inside = np.cumsum(diff[: woff[-1]]) > 0
        words = self._positions(1, docs)
        per_doc = np.bincount(
            np.repeat(np.arange(docs.size), n_words), weights=self.wlen[words] * inside, minlength=docs.size
        )
        return per_doc, repeats

    def repeated_chars(self, k: int, docs: np.ndarray, repeats: Any, i: int) -> int:
        """datatrove's duplicated k-gram characters of document ``docs[i]``, exactly
        (``_greedy_repeated_chars``); ``repeats`` comes from ``covered_chars(k, docs)``."""
        pos, rep, offsets = repeats
        a, b = int(offsets[i]), int(offsets[i + 1])
        if b <= a:
            return 0
        p = pos[a:b]
        chars = self.cum_len[p + k] - self.cum_len[p]
        return _greedy_repeated_chars(self._ngram_hash(k)[p], rep[a:b], chars, k)


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
