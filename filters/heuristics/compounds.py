"""Compound chunks split without the Python rules: plain words joined by single separators.

``words.py`` splits the commonest chunk shapes with Polars expressions and leaves the rest to
``RuleTokenizer`` (spaCy's algorithm in Python ``re``, ~20 us a chunk). After plain words, the
commonest rare shapes in real text are words joined by one mark: "well-known", "don't", "and/or",
"os_path", "12.1.3", often with one closing mark after them ("well-known,", "12.1.3."). This module
splits those exactly as the rules do, vectorised:

- a chunk ``P(SP)*X?``: runs ``P`` of letters/marks/digits, single separators ``S`` from
  ``SEPARATORS``, and at most one final closing mark ``X`` that the rules always peel as a suffix
  (or a "." that is one there: after a lowercase letter or digit, or after two capitals);
- it has no prefix (it starts with a plain character) and no other suffix: we leave out chunks ending
  in "'s" (a suffix of en/xx), a number with a unit ("10km/h"), and chunks whose core (without ``X``)
  is a tokenizer exception (the rules stop peeling there);
- no URL can match (a URL needs a "." after a non-digit; we accept "." only between digits, where the
  only URL is an IP address, kept whole, which is what the infix rules give too); French chunks with a
  hyphen or an apostrophe are left to the rules (French's token pattern keeps many whole);
- the core is then cut at its infixes: a separator is an infix when the characters around it match the
  language's infix rule (``_INFIX``, e.g. English splits "-" between a letter or digit and a letter);
  any other separator stays inside its word ("don't" stays "don't" when it is not an exception).
- last, the rules merge back exception sequences (spaCy's special matcher): a chunk whose words hold
  such a sequence goes back to the rules.

``tests/heuristics/test_rules.py`` checks this against ``RuleTokenizer`` on every chunk shape it accepts
(with letters of several scripts and cases, digits and the separators) and on the corpora's chunks.
"""
from __future__ import annotations

import json
from functools import cache

import polars as pl

from filters.heuristics.words import _ALWAYS_SUFFIX, _PLAIN, RULES_FILE, char_class, rule_tokenizer

#: Separators a compound may hold (each alone between two plain runs).
SEPARATORS = "-–—~+*^,:<>=/'’_."
_SEP_CLASS = char_class(SEPARATORS)


@cache
def _classes() -> dict[str, str]:
    """spaCy's letter classes (Python ``re`` bodies) as Rust-regex class bodies of code-point ranges."""
    from re import _parser  # type: ignore[attr-defined]

    out = {}
    for name, body in json.loads(RULES_FILE.read_text(encoding="utf-8"))["classes"].items():
        if name not in ("ALPHA", "ALPHA_LOWER", "ALPHA_UPPER"):
            continue
        parts = []
        for op, av in _parser.parse(f"[{body}]").data[0][1]:
            if str(op) == "LITERAL":
                parts.append(f"\\x{{{av:X}}}")
            elif str(op) == "RANGE":
                parts.append(f"\\x{{{av[0]:X}}}-\\x{{{av[1]:X}}}")
            else:  # pragma: no cover - the rule data holds literals and ranges only
                raise ValueError(f"unexpected class item {op} in {name}")
        out[name] = "".join(parts)
    return out


@cache
def _infix(lang: str) -> str:
    """A regex over "<char before><separator><char after>" that matches when the separator is an
    infix of ``lang`` there (spaCy's infix rules restricted to single separators between plain runs)."""
    a = _classes()["ALPHA"]
    digit_ops = "+*^" if lang == "es" else "+\\-*^"  # Spanish has no hyphen infix at all
    alts = [f"[0-9][{digit_ops}][0-9]", f"[{a}],[{a}]", f"[{a}0-9][:<>=/][{a}]"]
    if lang == "en":
        alts.append(f"[{a}0-9][\\-–—~][{a}]")
    elif lang in ("fr", "xx"):
        alts.append(f"[{a}][\\-–—~][{a}]")
    return "^(?:" + "|".join(alts) + ")$"


@cache
def _merge_patterns(lang: str) -> dict[int, pl.Series]:
    """The word sequences the rules merge back into an exception, by length, joined by NUL."""
    by_len: dict[int, list[str]] = {}
    for pattern in rule_tokenizer(lang)._merge:
        by_len.setdefault(len(pattern), []).append("\x00".join(pattern))
    return {n: pl.Series(sorted(ps), dtype=pl.Utf8) for n, ps in sorted(by_len.items())}


def _merged_back(words: pl.DataFrame, lang: str) -> pl.Series:
    """``_i`` of the chunks whose words (``_i``, ``_w``, ``tok``, sorted) hold a sequence that the rules
    would merge back into an exception."""
    hits = []
    tok, i = pl.col("tok"), pl.col("_i")
    for n, patterns in _merge_patterns(lang).items():
        gram = pl.concat_str([tok.shift(-m) for m in range(n)], separator="\x00") if n > 1 else tok
        found = words.filter((i.shift(-(n - 1)) == i) & gram.is_in(patterns.implode()))
        hits.append(found["_i"])
    return pl.concat(hits).unique()


def split_compounds(rare: pl.DataFrame, lang: str, special_keys: pl.Series, units: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split the compounds among ``rare`` (``_i``, ``chunk``; ``special_keys``: the exceptions, imploded):
    (their words as ``_i``, ``_j``, ``tok``;
    the rows of ``rare`` left to the rules)."""
    c = pl.col("chunk")
    lower, upper = _classes()["ALPHA_LOWER"], _classes()["ALPHA_UPPER"]
    shape = c.str.contains(f"^{_PLAIN}+(?:[{_SEP_CLASS}]{_PLAIN}+)*(?:[{char_class(_ALWAYS_SUFFIX)}]|\\.)?$")
    dot_end = c.str.ends_with(".")
    # a final "." is a suffix after a lowercase letter, a digit or "²", or after two capitals
    dot_suffix = c.str.contains(f"(?:[0-9²{lower}]|[{upper}][{upper}])\\.$")
    last_plain = c.str.contains(f"{_PLAIN}$")
    core = pl.when(last_plain).then(c).otherwise(c.str.head(-1))
    ok = (
        shape
        & (~dot_end | dot_suffix)
        & ~core.str.contains("['’][sS]$")
        & ~core.str.contains(units)
        & ~core.is_in(special_keys)
        # "." only between digits (no URL but an IP address can match, and no dot infix applies)
        & (~core.str.contains(".", literal=True) | core.str.contains(r"^[0-9]+(?:[.,][0-9]+)+$"))
    )
    if lang == "fr":
        ok = ok & ~c.str.contains(r"['’\-‐‑–—]")
    cand = rare.with_columns(_core=core, _x=pl.when(last_plain).then(pl.lit(None, pl.Utf8)).otherwise(c.str.tail(1)))
    cand = cand.filter(ok)
    if cand.height == 0:
        return pl.DataFrame(schema={"_i": pl.UInt32, "_j": pl.UInt32, "tok": pl.Utf8}), rare
    pieces = (
        cand.select("_i", "_x", piece=pl.col("_core").str.extract_all(f"[^{_SEP_CLASS}]+|[{_SEP_CLASS}]"))
        .with_columns(_k=pl.int_ranges(pl.col("piece").list.len(), dtype=pl.UInt32))
        .explode("piece", "_k")
    )
    p = pl.col("piece")
    is_sep = (pl.col("_k") % 2) == 1
    window = pl.concat_str(p.shift(1).str.tail(1), p, p.shift(-1).str.head(1))
    split = is_sep & window.str.contains(_infix(lang))
    pieces = pieces.with_columns(_split=split)
    # a word starts at the first piece, at a splitting separator and right after one
    starts = (pl.col("_k") == 0) | pl.col("_split") | pl.col("_split").shift(1)
    pieces = pieces.with_columns(_w=starts.cast(pl.UInt32).cum_sum().over("_i"))
    toks = pieces.group_by("_i", "_w", maintain_order=True).agg(tok=p.str.join(""), _x=pl.col("_x").first())
    tails = toks.group_by("_i", maintain_order=True).agg(_n=pl.len(), _x=pl.col("_x").first())
    tails = tails.filter(pl.col("_x").is_not_null()).select("_i", _w=pl.col("_n") + 1, tok=pl.col("_x"))
    words = pl.concat([toks.select("_i", "_w", "tok"), tails.select("_i", pl.col("_w").cast(pl.UInt32), "tok")])
    words = words.sort("_i", "_w")
    back = _merged_back(words, lang)
    if back.len():
        words = words.filter(~pl.col("_i").is_in(back.implode()))
    done = words["_i"].unique()
    words = words.select("_i", _j=(pl.col("_w") - 1).cast(pl.UInt32), tok="tok")
    return words, rare.filter(~pl.col("_i").is_in(done.implode()))


__all__ = ["SEPARATORS", "split_compounds"]
