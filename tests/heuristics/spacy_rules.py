"""Build ``filters/heuristics/tokenizer_rules.json`` from an installed spaCy (a dev/test tool, not runtime).

datatrove splits English, French and Spanish words with ``spacy.blank(lang)``'s rule-based tokenizer. Our
word splitter (``filters.heuristics.words``) follows the same rules without importing spaCy: it reads the
rule data (affix and infix patterns, the URL pattern, French's token pattern, and the tokenizer exceptions)
from that JSON file. This module regenerates the file and ``test_rules.py`` checks that the stored copy still
matches the installed spaCy.

    .venv/bin/python -m tests.heuristics.spacy_rules     # rewrite the JSON from the installed spaCy

The patterns repeat a few very long character classes; they are stored once under ``classes`` and the
patterns refer to them as ``{{NAME}}``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RULES_PATH = Path(__file__).resolve().parents[2] / "filters" / "heuristics" / "tokenizer_rules.json"
LANGS = ("en", "fr", "es", "xx")


def _classes() -> dict[str, str]:
    from spacy.lang import char_classes as cc
    from spacy.lang.fr import punctuation as frp

    names = {
        "ALPHA": cc.ALPHA,
        "ALPHA_LOWER": cc.ALPHA_LOWER,
        "ALPHA_UPPER": cc.ALPHA_UPPER,
        "ICONS": cc.ICONS,
        "UNITS": cc.UNITS,
        "CURRENCY": cc.CURRENCY,
        "FR_HYPHENS": frp.HYPHENS,
    }
    # the URL pattern's lowercase class
    from spacy.lang.char_classes import LATIN_LOWER

    names["LATIN_LOWER"] = LATIN_LOWER
    # longest first so that a class that contains another is replaced whole
    return dict(sorted(names.items(), key=lambda kv: -len(kv[1])))


def _compress(pattern: str, classes: dict[str, str]) -> str:
    for name, value in classes.items():
        if len(value) >= 40:
            pattern = pattern.replace(value, "{{" + name + "}}")
    return pattern


def build() -> dict[str, Any]:
    import spacy
    import spacy.about

    classes = _classes()
    out: dict[str, Any] = {
        "_source": f"spaCy {spacy.about.__version__} (MIT licence): rule-based tokenizer data of spacy.blank(lang)",
        "classes": {k: v for k, v in classes.items() if len(v) >= 40},
        "langs": {},
    }
    for lang in LANGS:
        tok: Any = spacy.blank(lang).tokenizer
        rules = {orth: [t[65] if 65 in t else t["ORTH"] for t in toks] for orth, toks in tok.rules.items()}
        # special cases that spaCy also looks for across affix-split tokens (its "special matcher")
        bare = spacy.tokenizer.Tokenizer(
            tok.vocab,
            rules={},
            prefix_search=tok.prefix_search,
            suffix_search=tok.suffix_search,
            infix_finditer=tok.infix_finditer,
            token_match=tok.token_match,
            url_match=tok.url_match,
        )
        matcher = {}
        for orth in rules:
            if tok.find_prefix(orth) or tok.find_infix(orth) or tok.find_suffix(orth) or " " in orth:
                matcher[orth] = [t.text for t in bare(orth)]
        entry = {
            "prefix": _compress(tok.prefix_search.__self__.pattern, classes),
            "suffix": _compress(tok.suffix_search.__self__.pattern, classes),
            "infix": _compress(tok.infix_finditer.__self__.pattern, classes),
            "url": _compress(tok.url_match.__self__.pattern, classes) if tok.url_match else None,
            "token": _compress(tok.token_match.__self__.pattern, classes) if tok.token_match else None,
            "specials": dict(sorted(rules.items())),
            "matcher": dict(sorted(matcher.items())),
        }
        for key in ("prefix", "suffix", "infix", "url", "token"):
            src = getattr(tok, {"prefix": "prefix_search", "suffix": "suffix_search", "infix": "infix_finditer",
                                "url": "url_match", "token": "token_match"}[key])
            if src is not None:  # flags only come from the pattern text itself
                assert re.compile(src.__self__.pattern).flags == src.__self__.flags, (lang, key)
        out["langs"][lang] = entry
    return out


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1, sort_keys=False) + "\n"


if __name__ == "__main__":
    RULES_PATH.write_text(dump(build()), encoding="utf-8")
    print(f"wrote {RULES_PATH} ({RULES_PATH.stat().st_size} bytes)")
