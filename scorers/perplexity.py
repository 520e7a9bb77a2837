"""``perplexity``: bits per byte of each document under one or more language models.

For each model (``models``: a name and an inference config; transformers on CPU, vLLM on GPU,
or a server), the document is cut to ``max_input_tokens`` tokens, its per-token log-probabilities
come from the inference layer (first token conditioned on BOS), and

    bits_per_byte = -sum(log p(token)) / ln 2 / (UTF-8 bytes of the scored text)

which, unlike perplexity per token, compares across tokenizers. Writes ``bpb__<name>`` per
model (null for empty text, ``not_sampled`` rows, or a backend failure, with ``ppl_error``) and
``bpb`` = the first model's value. Results are cached like the graders' (model, text hash).
``sample_rate`` scores a deterministic sample (hash of the id). The flow also stores the
byte-weighted mean per domain (``group_by``) and model in the catalog table ``bpb_matrix``: the
models x domains matrix perplexity-correlation selection starts from.

Cost: one forward pass over up to ``max_input_tokens`` tokens per document and model.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.inference import InferenceBackend, InferenceConfig, make_backend
from engines.inference.base import BACKEND_REQUIRES, backend_resources, close_all
from engines.inference.base import runtime_params as inference_runtime_params
from engines.inference.cache import ResultCache, cache_key, text_hash
from engines.stage import Resources, Stage, StageContext, register_stage
from scorers.llm_grade import in_sample


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    inference: InferenceConfig = InferenceConfig()


class PerplexityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(name="smollm2")], min_length=1)
    max_input_tokens: int = Field(default=512, ge=8)
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    group_by: Literal["domain", "source"] = "domain"


def bits_per_byte(logprobs: list[float], text: str) -> float | None:
    n = len(text.encode("utf-8"))
    if n == 0 or not len(logprobs) or any(math.isnan(x) for x in logprobs):
        return None
    return -float(sum(logprobs)) / math.log(2) / n


@register_stage
class Perplexity(Stage):
    kind = "perplexity"
    version = "1"
    needs = ("text",)
    Params = PerplexityParams
    # A model load per worker: keep set-up copies in long-lived workers (actors on Ray).
    stateful = True
    runtime_params = inference_runtime_params("models[].inference")

    def resources(self) -> Resources:
        return backend_resources([m.inference for m in self.params.models])  # type: ignore[attr-defined]

    requires = BACKEND_REQUIRES["transformers"]  # the default backend; requirements() follows the params

    def requirements(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for m in self.params.models:  # type: ignore[attr-defined]
            out.update(m.inference.requires())
        return out

    def writes(self) -> dict[str, pa.DataType]:
        cols = {f"bpb__{m.name}": pa.float64() for m in self.params.models}  # type: ignore[attr-defined]
        return {"bpb": pa.float64(), **cols, "ppl_error": pa.string()}

    def setup(self, ctx: StageContext) -> None:
        p: PerplexityParams = self.params  # type: ignore[assignment]
        given = ctx.extra.get("backends") or {}
        self.backends: dict[str, InferenceBackend] = {m.name: given.get(m.name) or make_backend(m.inference)
                                                      for m in p.models}
        self.cache = ResultCache(f"{ctx.cache_dir or Path.home() / '.cache' / 'curate'}/ppl_results.sqlite")

    def teardown(self) -> None:
        """Close the model backends and the result cache (frees GPU memory under vLLM)."""
        close_all(*getattr(self, "backends", {}).values(), getattr(self, "cache", None))

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: PerplexityParams = self.params  # type: ignore[assignment]
        ids, texts = batch.get_column("id").to_list(), batch.get_column("text").to_list()
        todo = [i for i, (d, t) in enumerate(zip(ids, texts)) if in_sample(d, p.sample_rate) and t.strip()]
        cols: dict[str, list[float | None]] = {}
        scored = set(todo)
        errors: list[str | None] = [None if i in scored else ("not_sampled" if not in_sample(d, p.sample_rate) else "empty_text")
                                    for i, d in enumerate(ids)]
        for m in p.models:
            b = self.backends[m.name]
            pieces = {i: b.truncate(texts[i], p.max_input_tokens) for i in todo}
            keys = {i: cache_key(b.model_id, "bpb-v1", text_hash(pieces[i])) for i in todo}
            cached = self.cache.get_many(list(keys.values()))
            missing = [i for i in todo if keys[i] not in cached]
            fresh: dict[str, float | None] = {}
            if missing:
                for i, lp in zip(missing, b.text_logprobs([pieces[i] for i in missing])):
                    fresh[keys[i]] = bits_per_byte(list(lp), pieces[i])
                self.cache.put_many(fresh)
            values: list[float | None] = [None] * len(ids)
            for i in todo:
                v = cached.get(keys[i], fresh.get(keys[i]))
                values[i] = v
                if v is None and errors[i] is None:
                    errors[i] = f"backend returned no log-probabilities ({m.name})"
            cols[f"bpb__{m.name}"] = values
        first = cols[f"bpb__{p.models[0].name}"]
        return pl.DataFrame({"bpb": first, **cols, "ppl_error": errors},
                            schema={"bpb": pl.Float64, **{k: pl.Float64 for k in cols}, "ppl_error": pl.String})
