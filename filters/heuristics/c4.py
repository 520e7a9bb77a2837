"""C4's heuristic cleaning (Raffel et al. 2020, section 2.2), vectorised: stage ``c4``.

Line rules remove lines; document rules drop the document. Writes ``keep``, ``reason`` and
``text_clean`` (the kept lines; null where that is the text unchanged), at parity with datatrove's
``C4QualityFilter``.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_validator

from engines.derived_text import store_once
from engines.stage import Stage, StageContext, register_stage
from filters.heuristics.common import KEEP_REASON, char_class, first_failure, py_strip, splitlines_list, with_lang
from filters.heuristics.words import NON_WS_RUN, ChunkTable, chunk_table, warm_up

CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
END_PUNCTUATION = ".?!\"'"
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")

#: The characters after which spaCy's rule-based sentencizer may start a new sentence (its defaults).
SENTENCE_END_CHARS = (
    "!.?\u0589\u061f\u06d4\u0700\u0701\u0702\u07f9\u0964\u0965\u104a\u104b\u1362\u1367\u1368\u166e"
    "\u1735\u1736\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1c3b\u1c3c"
    "\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876"
    "\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01"
    "\uff0e\uff1f\uff61\U00010a56\U00010a57\U00011047\U00011048\U000110be\U000110bf\U000110c0"
    "\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df"
    "\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3"
    "\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1"
    "\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c"
    "\U0001173d\U0001173e\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42\U00016a6e"
    "\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U0001bc9f\U0001da88"
)

_NONE, _PERIOD, _WORD = 0, 1, 2  # sentencizer events of a token: none, sentence-end char, non-punctuation


class C4Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    split_paragraph: bool = True
    """Rules apply per line (only ``true`` is implemented)."""
    remove_citations: bool = True
    """Remove ``[12]``, ``[edit]``, ``[citation needed]`` from lines."""
    filter_no_terminal_punct: bool = True
    """Remove lines not ending in ``. ? ! " '`` (or ending in "..."): headings, menus, code."""
    min_num_sentences: int = 5
    """Kept lines hold fewer sentences: dropped (``c4_too_few_sentences``); -1 off. Web-crawl default:
    drops 75% of English Wikipedia summaries; use 1-2 for short encyclopedic text."""
    min_words_per_line: int = 3
    """Remove lines with fewer words; -1 off."""
    max_word_length: int = 1000
    """Remove lines with a longer word; -1 off."""
    filter_lorem_ipsum: bool = True
    """A kept line with "lorem ipsum": dropped (``c4_lorem_ipsum``)."""
    filter_javascript: bool = True
    """Remove lines mentioning "javascript"."""
    filter_curly_bracket: bool = True
    """A kept line with "{": dropped (``c4_curly_bracket``); drops 12% of the Python docs (code)."""
    filter_policy: bool = True
    """Remove lines with "terms of use", "privacy policy", "cookie policy", "uses cookies"..."""

    @field_validator("split_paragraph")
    @classmethod
    def _lines_only(cls, v: bool) -> bool:
        if not v:
            raise ValueError("split_paragraph=False (rules per sentence instead of per line) is not implemented")
        return v


@register_stage
class C4Quality(Stage):
    """C4's rules, line by line (``str.splitlines()``, each line stripped), in datatrove's order.

    A line is removed when, checked in this order: one of its whitespace-separated words is longer
    than ``max_word_length``; after removing citations it does not end in terminal punctuation or
    ends in "..."; it has fewer than ``min_words_per_line`` words; it mentions "javascript"; it contains
    a policy phrase. The document is dropped as soon as a line that got past the first three rules
    contains "lorem ipsum" (``c4_lorem_ipsum``) or, past "javascript", a "{" (``c4_curly_bracket``), or
    at the end when the kept lines hold fewer than ``min_num_sentences`` sentences
    (``c4_too_few_sentences``). Sentences are counted per kept line as spaCy's rule-based sentencizer
    does, on the line's words (``words.py``).

    Defaults (datatrove's): ``split_paragraph`` True (only True is supported), ``remove_citations``
    True (``[12]``, ``[]``, ``[edit]``, ``[citation needed]``), ``filter_no_terminal_punct`` True
    (``. ? ! " '``), ``min_num_sentences`` 5 (-1: off), ``min_words_per_line`` 3 (-1: off),
    ``max_word_length`` 1000 (-1: off), ``filter_lorem_ipsum``, ``filter_javascript``,
    ``filter_curly_bracket``, ``filter_policy`` True ("terms of use", "privacy policy", "cookie
    policy", "uses cookies", "use of cookies", "use cookies"). Phrase tests are on the lowercased line.

    ``text_clean`` is the kept lines joined by "\\n" and stripped, for every document, kept or not
    (datatrove only rewrites the text of kept documents; for those the two are equal), and null
    where that equals the input text (stored once: engines/derived_text.py).
    """

    kind = "c4"
    version = "2"  # 2: text_clean is null where the text is unchanged
    needs = ("text", "lang")
    Params = C4Params
    text_columns = ("text_clean",)

    def setup(self, ctx: StageContext) -> None:
        warm_up()

    def writes(self) -> dict[str, pa.DataType]:
        return {**KEEP_REASON, "text_clean": pa.large_string()}

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: C4Params = self.params  # type: ignore[assignment]
        docs = with_lang(batch).with_row_index("row")
        lines = (
            docs.select("row", "lang", line=splitlines_list(pl.col("text")))
            .explode("line")
            .drop_nulls("line")
            .with_columns(line=py_strip(pl.col("line")))
        )
        line = pl.col("line")
        n_words = line.str.count_matches(NON_WS_RUN)
        clean = line.str.replace_all(CITATION, "") if p.remove_citations else line
        lines = lines.with_columns(too_long=_too_long(lines.get_column("line"), p.max_word_length),
                                   n_words=n_words, clean=clean)
        c = pl.col("clean")
        low = c.str.to_lowercase()
        skip_early = pl.col("too_long")
        if p.filter_no_terminal_punct:
            skip_early = skip_early | ~c.str.contains(f"[{char_class(END_PUNCTUATION)}]$") | c.str.ends_with("...")
        skip_early = skip_early | (pl.col("n_words") < p.min_words_per_line)
        lorem = low.str.contains("lorem ipsum", literal=True) if p.filter_lorem_ipsum else pl.lit(False)
        js = low.str.contains("javascript", literal=True) if p.filter_javascript else pl.lit(False)
        curly = c.str.contains("{", literal=True) if p.filter_curly_bracket else pl.lit(False)
        policy = low.str.contains("|".join(POLICY_SUBSTRINGS)) if p.filter_policy else pl.lit(False)
        # 0 kept, 1 removed, 2 lorem ipsum (drops the document), 3 curly bracket (drops the document)
        state = (
            pl.when(skip_early)
            .then(1)
            .when(lorem)
            .then(2)
            .when(js)
            .then(1)
            .when(curly)
            .then(3)
            .when(policy)
            .then(1)
            .otherwise(0)
        )
        lines = lines.select("row", "lang", "clean", state=state)
        doc_event = (
            lines.filter(pl.col("state") >= 2).group_by("row").agg(event=pl.col("state").first())
        )
        kept = lines.filter(pl.col("state") == 0)
        text_clean = kept.group_by("row", maintain_order=True).agg(pl.col("clean").str.join("\n"))
        if p.min_num_sentences != -1 and kept.height:
            kept = kept.with_columns(sentences=_sentence_counts(kept))
            sentences = kept.group_by("row").agg(n_sent=pl.col("sentences").sum())
        else:
            sentences = kept.group_by("row").agg(n_sent=pl.len().cast(pl.Int64) * 0)
        out = (
            docs.select("row")
            .join(doc_event, on="row", how="left")
            .join(sentences, on="row", how="left")
            .join(text_clean, on="row", how="left")
            .sort("row")
            .with_columns(text=batch.get_column("text"))
        )
        reason = first_failure(
            [
                ("c4_lorem_ipsum", pl.col("event") == 2),
                ("c4_curly_bracket", pl.col("event") == 3),
                ("c4_too_few_sentences", pl.col("n_sent").fill_null(0) < p.min_num_sentences),
            ]
        )
        return out.select(
            keep=reason.is_null(),
            reason=reason,
            text_clean=store_once(py_strip(pl.col("clean").fill_null("")), pl.col("text")),
        )


def _too_long(lines: pl.Series, limit: int) -> pl.Series:
    """Whether each line holds a whitespace-separated word longer than ``limit`` (-1: never). Only a line
    longer than the limit can, so only those (few) lines are cut into words."""
    out = np.zeros(len(lines), dtype=bool)
    if limit != -1:
        idx = np.flatnonzero((lines.str.len_chars() > limit).fill_null(False).to_numpy())
        if idx.size:
            longest = lines.gather(idx).str.extract_all(NON_WS_RUN).list.eval(pl.element().str.len_chars()).list.max()
            out[idx] = (longest > limit).fill_null(False).to_numpy()
    return pl.Series("too_long", out)


def _sentence_counts(kept: pl.DataFrame) -> np.ndarray:
    """Sentences of each line as spaCy's sentencizer counts them (``kept`` has ``clean`` and ``lang``).

    The sentencizer starts a new sentence at the first token that is neither punctuation nor a
    sentence-end character after a sentence-end character. Whitespace runs other than one " " are
    tokens too (non-punctuation). Each distinct chunk is summarised once: its boundaries inside, and
    the kind of its first and last relevant token; chunks are then chained along each line.
    """
    ct = chunk_table(kept, text="clean", with_space_tokens=True)
    first, last, inner = _chunk_events(ct)
    sb = ct.space_before if ct.space_before is not None else np.zeros(ct.row.size, dtype=bool)
    f = np.where(sb, _WORD, first[ct.code])
    lst = np.where(last[ct.code] != _NONE, last[ct.code], np.where(sb, _WORD, _NONE))
    # the last event before each chunk occurrence on its line (occurrences are in text order)
    pos = np.arange(lst.size)
    seen = np.maximum.accumulate(np.where(lst != _NONE, pos, -1))
    before = np.concatenate([[-1], seen[:-1]])
    same_line = before >= 0
    same_line[same_line] = ct.row[before[same_line]] == ct.row[same_line]
    prev = np.where(same_line, lst[np.maximum(before, 0)], _NONE)
    starts = (f == _WORD) & (prev == _PERIOD)
    n = np.bincount(ct.row, weights=inner[ct.code] + starts, minlength=kept.height)
    return 1 + n.astype(np.int64)


def _chunk_events(ct: ChunkTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct chunk: first and last sentencizer event, and boundaries between its own tokens."""
    toks = ct.tokens
    period = toks.is_in(pl.Series(list(SENTENCE_END_CHARS)).implode()).to_numpy()
    punct = toks.str.contains(r"^\p{P}+$").to_numpy()
    event = np.where(period, _PERIOD, np.where(punct, _NONE, _WORD)).astype(np.int64)
    n = ct.uniq.height
    # one-word chunks (most of them): the word is the first and the last event, no boundary inside
    single = ct.n_tokens == 1
    first = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    inner = np.zeros(n, dtype=np.int64)
    first[single] = event[ct.offsets[:-1][single]]
    last[single] = first[single]
    multi = ~single[ct.token_chunk]
    if multi.any():
        ev = pl.DataFrame({"chunk": ct.token_chunk[multi], "event": event[multi]}).filter(pl.col("event") != _NONE)
        ev = ev.with_columns(prev=pl.col("event").shift(1).over("chunk"))
        agg = ev.group_by("chunk").agg(
            first=pl.col("event").first(),
            last=pl.col("event").last(),
            inner=((pl.col("event") == _WORD) & (pl.col("prev") == _PERIOD)).sum(),
        )
        k = agg["chunk"].to_numpy()
        first[k] = agg["first"].to_numpy()
        last[k] = agg["last"].to_numpy()
        inner[k] = agg["inner"].to_numpy()
    return first, last, inner
