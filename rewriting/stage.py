"""``rewrite``: the stage that creates synthetic documents from routed parents.

Unlike every other stage it does not only annotate: for the parents its routes take, it writes
new documents into derived sources (schemas/derived.py) through the storage layer, and the flow
then runs the pipeline's stages over those shards like any source's (flows/rewrite_step.py).
What it annotates, row-aligned with every shard of its sources and of its derived sources:

| column | meaning |
|---|---|
| ``routes`` | the routes that took this parent, comma-separated (null: none) |
| ``routed_tokens`` | the parent's whitespace words, charged to each of those routes' budgets |
| ``generated`` / ``derived`` / ``dropped`` / ``errors`` | candidates made / written as documents / dropped by a check / lost to backend errors |
| ``drop_reasons`` | JSON {reason: count} of the dropped candidates |
| ``origin`` | ``real`` for parents, ``synthetic`` for derived documents (a mixture can ``group_by`` it) |
| ``keep``, ``reason`` | false only where ProX dropped the parent (``prox:drop``) or replaced it with its edited version (``prox:edited``) |

Parameters: rewriting/params.py (``inference``, ``routes``); each route's method and limits:
rewriting/methods/. The routing expressions read earlier stages' columns; the stage declares
them as implied inputs, so the flow feeds them like ``inputs:`` entries.

Cost: dominated by generation (prompt plus reply tokens of every job on the backend); the
routing pass reads the routing columns and the text of new parent shards once.
"""
from __future__ import annotations

import ast
from typing import Any

import polars as pl
import pyarrow as pa

from engines.inference.base import RUNTIME_FIELDS, backend_resources
from engines.inference.base import runtime_params as inference_runtime_params
from engines.stage import Resources, Stage, register_stage
from rewriting.params import RewriteParams
from schemas.config import stable_hash

DOC_COLUMNS = ("source", "lang", "domain", "url", "license")  # document columns a `when` may read
ANNOTATION = {
    "routes": pa.string(), "routed_tokens": pa.int64(), "generated": pa.int32(), "derived": pa.int32(),
    "dropped": pa.int32(), "errors": pa.int32(), "drop_reasons": pa.string(), "origin": pa.string(),
    "keep": pa.bool_(), "reason": pa.string(),
}


def referenced(expr: str) -> tuple[list[str], list[str]]:
    """(``stage.column`` names, document columns) an expression in the selection language reads."""
    try:
        tree = ast.parse(expr.strip() or "true", mode="eval")
    except SyntaxError:
        return [], []
    cols, docs = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            cols.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in DOC_COLUMNS:
            docs.append(node.id)
    return list(dict.fromkeys(cols)), list(dict.fromkeys(docs))


@register_stage
class RewriteStage(Stage):
    kind = "rewrite"
    version = "1"
    needs = ("text",)
    Params = RewriteParams
    # A model per worker: set-up copies live in long-lived workers (Ray reuses worker processes;
    # rewriting.task.worker_generator keeps one generator per process and params).
    stateful = True
    # Speed knobs: they change how replies are computed, never which (the result cache is keyed by
    # model, template, sampling and text), so they stay out of the stage key and the derived
    # shards' fingerprint: changing a batch size reuses everything generated.
    runtime_params = (*inference_runtime_params("inference"), "chunk_prompts", "parents_per_batch")

    def __init__(self, params: Any = None, upstream: dict[str, str] | None = None):
        super().__init__(params, upstream)
        cols: list[str] = []
        docs: list[str] = []
        for r in self.rparams.routes:
            c, d = referenced(r.when)
            cols += c
            docs += d
        # Instance attribute: the columns depend on the routing expressions.
        self.needs = tuple(dict.fromkeys(("text", *docs, *cols)))  # type: ignore[misc,assignment]

    @property
    def rparams(self) -> RewriteParams:
        return self.params  # type: ignore[return-value]

    def implied_inputs(self) -> dict[str, str]:
        """Columns of earlier stages the routing expressions read, as ``inputs:`` entries."""
        return {c: c for c in self.needs if "." in c}

    def requirements(self) -> dict[str, tuple[str, ...]]:
        return self.rparams.inference.requires()

    def resources(self) -> Resources:
        """One generation worker: a GPU for vLLM, the configured threads on CPU (the executor
        reserves this per shard task; see ``Executor.map``)."""
        return backend_resources([self.rparams.inference])  # type: ignore[no-any-return]

    def writes(self) -> dict[str, pa.DataType]:
        return dict(ANNOTATION)

    def generation_hash(self) -> str:
        """The part of the config that decides what a routed parent becomes (not which parents
        are routed): the fingerprint of derived shards (rewriting/plan.py) builds on it."""
        p = self.rparams
        inference = p.inference.model_dump(mode="json")
        for field in RUNTIME_FIELDS:
            inference.pop(field, None)
        return stable_hash({"inference": inference, "language_check": p.language_check,
                            "min_language_score": p.min_language_score, "version": self.version})[:12]

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The annotation of derived documents (they are not parents): origin ``synthetic``."""
        return synthetic_rows(batch.height)


def synthetic_rows(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "routes": pl.Series([None] * n, dtype=pl.String), "routed_tokens": pl.Series([0] * n, dtype=pl.Int64),
        "generated": pl.Series([0] * n, dtype=pl.Int32), "derived": pl.Series([0] * n, dtype=pl.Int32),
        "dropped": pl.Series([0] * n, dtype=pl.Int32), "errors": pl.Series([0] * n, dtype=pl.Int32),
        "drop_reasons": pl.Series([None] * n, dtype=pl.String), "origin": pl.Series(["synthetic"] * n, dtype=pl.String),
        "keep": pl.Series([True] * n, dtype=pl.Boolean), "reason": pl.Series([None] * n, dtype=pl.String)})
