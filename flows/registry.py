"""Loads every built-in stage module (so their kinds register) and optional plugins.

Plugins: ``CURATE_PLUGINS=pkg.module,other.module`` imports those modules before a run; each
registers its stages with ``@register_stage``. This is how a team adds its own stages without
forking, and how the tests add a deliberately slow stage. Nothing is imported from the YAML.
"""
from __future__ import annotations

import importlib
import os

BUILTIN = [
    "filters.length",
    "filters.exact_dedup",
    "filters.langid",
    "filters.pii",
    "filters.decontam",
    "filters.line_dedup",
    "filters.minhash",
    "filters.heuristics",
    "scorers.difficulty",
    "scorers.llm_grade",
    "scorers.fasttext_quality",
    "scorers.perplexity",
    "scorers.ppl_corr.stage",
    "scorers.ensemble",
    "scorers.embed",
    "filters.semdedup",
    "rewriting.stage",
    "scorers.top_fraction",
]
OPTIONAL: list[str] = [
    # Modules that need optional packages; skipped quietly when those are absent.
]


def load_stages() -> None:
    for mod in BUILTIN:
        importlib.import_module(mod)
    for mod in OPTIONAL:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    for mod in filter(None, (m.strip() for m in os.environ.get("CURATE_PLUGINS", "").split(","))):
        importlib.import_module(mod)
