"""``llm_grader``: grade documents with a language model through the inference layer.

Graders (prompt templates in scorers/prompts/, written for this project; the file name carries
the version and the file's hash is part of the stage key and of every cache key):

- ``edu`` (edu_v1): additive 0-5 educational-value rubric; the score is the last "Score: N".
- ``ask_llm`` (ask_llm_v1): "is this useful pre-training data?"; the score is P(Yes) among
  {Yes, No} from the first reply token's log-probabilities (no text is generated).
- ``multi`` (multi_v1): five 1-5 criteria plus a domain label, as JSON; the score is "overall",
  the criteria are written as a JSON column and the domain as ``label``.

Defaults: ``sample_rate=1.0`` (grade every document; a lower rate grades a deterministic sample
chosen by a hash of the id, the others get a null score with reason ``not_sampled``),
``chunking="head"`` (documents are cut to ``inference.max_input_tokens`` tokens with the model's
tokenizer; ``mean_of_chunks`` grades up to ``max_chunks`` consecutive chunks of that size and
averages them), ``max_retries=2`` (an unusable reply is asked again with temperature 0.7 and a
new seed; after that the score is null and ``raw`` keeps the last reply with ``grade_error``
naming the reason). Results are cached by (model, template, sampling params, text hash) in
``<lake>/cache/llm_results.sqlite``, so a re-run or a crash re-grades nothing.

Cost: one prompt of up to ``max_input_tokens`` + the rubric per document (and per chunk);
SmolLM2-135M on CPU manages a few documents per second, vLLM on a GPU thousands.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.inference import InferenceBackend, InferenceConfig, SamplingParams, make_backend
from engines.inference.base import BACKEND_REQUIRES, backend_resources, close_all
from engines.inference.base import runtime_params as inference_runtime_params
from engines.inference.cache import ResultCache, cache_key, text_hash
from engines.stage import Resources, Stage, StageContext, register_stage
from scorers.llm_parsing import Parsed, parse_edu, parse_multi, yes_probability

PROMPTS = Path(__file__).parent / "prompts"
TEMPLATES = {"edu": "edu_v1.txt", "ask_llm": "ask_llm_v1.txt", "multi": "multi_v1.txt"}


class GraderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: Literal["edu", "ask_llm", "multi"] = "edu"
    inference: InferenceConfig = InferenceConfig()
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    chunking: Literal["head", "mean_of_chunks"] = "head"
    max_chunks: int = Field(default=4, ge=1)
    max_retries: int = Field(default=2, ge=0)
    max_tokens: int = Field(default=128, ge=1)


def template_text(grader: str) -> str:
    return (PROMPTS / TEMPLATES[grader]).read_text(encoding="utf-8")


def in_sample(doc_id: str, rate: float) -> bool:
    """Deterministic sample membership from the id (the same documents on every run)."""
    return rate >= 1 or int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 2**32 < rate


@register_stage
class LLMGrader(Stage):
    kind = "llm_grader"
    version = "1"
    needs = ("text",)
    Params = GraderParams
    # A model load per worker: keep set-up copies in long-lived workers (actors on Ray).
    stateful = True
    runtime_params = inference_runtime_params("inference")

    def resources(self) -> Resources:
        return backend_resources([self.params.inference])  # type: ignore[attr-defined]

    requires = BACKEND_REQUIRES["transformers"]  # the default backend; requirements() follows the params

    def requirements(self) -> dict[str, tuple[str, ...]]:
        return self.params.inference.requires()  # type: ignore[attr-defined]

    def writes(self) -> dict[str, pa.DataType]:
        return {"score": pa.float64(), "label": pa.string(), "criteria": pa.string(), "raw": pa.string(),
                "grade_error": pa.string(), "model": pa.string()}

    def config_hash(self) -> str:
        digest = hashlib.sha256(template_text(self.params.grader).encode()).hexdigest()[:8]  # type: ignore[attr-defined]
        return hashlib.sha256((super().config_hash() + digest).encode()).hexdigest()[:10]

    # --- per worker ------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> None:
        p: GraderParams = self.params  # type: ignore[assignment]
        self.backend: InferenceBackend = ctx.extra.get("backend") or make_backend(p.inference)
        self.template = template_text(p.grader)
        self.template_id = f"{TEMPLATES[p.grader]}:{hashlib.sha256(self.template.encode()).hexdigest()[:8]}"
        cache_dir = ctx.cache_dir or str(Path.home() / ".cache" / "curate")
        self.cache = ResultCache(f"{cache_dir}/llm_results.sqlite")

    def _pieces(self, text: str) -> list[str]:
        p: GraderParams = self.params  # type: ignore[assignment]
        budget = p.inference.max_input_tokens
        if p.chunking == "head":
            return [self.backend.truncate(text, budget)]
        pieces, rest = [], text
        while rest and len(pieces) < p.max_chunks:
            head = self.backend.truncate(rest, budget)
            if not head:
                break
            pieces.append(head)
            rest = rest[len(head):].lstrip()
        return pieces or [""]

    def _grade(self, pieces: list[str]) -> list[dict[str, Any]]:
        """Grade text pieces (cache first); returns {"value", "label", "criteria", "raw", "reason"}."""
        p: GraderParams = self.params  # type: ignore[assignment]
        base = SamplingParams(max_tokens=p.max_tokens)
        keys = [cache_key(self.backend.model_id, self.template_id, base.model_dump(mode="json"), p.max_retries,
                          text_hash(t)) for t in pieces]
        cached = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in cached]
        results: dict[int, dict[str, Any]] = {}
        if todo:
            prompts = [[{"role": "user", "content": self.template.format(document=pieces[i])}] for i in todo]
            if p.grader == "ask_llm":
                for i, lp in zip(todo, self.backend.next_token_logprobs(prompts, ["Yes", "No"])):
                    results[i] = _as_dict(yes_probability(lp), json.dumps(lp))
            else:
                parse = parse_edu if p.grader == "edu" else parse_multi
                pending = list(range(len(todo)))
                last: dict[int, tuple[Parsed, str]] = {}
                for attempt in range(p.max_retries + 1):
                    params = base if attempt == 0 else SamplingParams(max_tokens=p.max_tokens, temperature=0.7, seed=attempt)
                    gens = self.backend.chat([prompts[j] for j in pending], params)
                    still = []
                    for j, g in zip(pending, gens):
                        parsed = parse(g.text) if g.finish_reason != "error" else Parsed(None, reason=f"backend: {g.error}")
                        if parsed.value is None and g.finish_reason == "length" and parsed.reason == "no_score":
                            parsed.reason = "truncated_reply"
                        last[j] = (parsed, g.text)
                        if parsed.value is None:
                            still.append(j)
                    pending = still
                    if not pending:
                        break
                for j, i in enumerate(todo):
                    parsed, raw = last[j]
                    results[i] = _as_dict(parsed, raw)
            self.cache.put_many({keys[i]: results[i] for i in todo})
        return [cached.get(k) or results[i] for i, k in enumerate(keys)]

    def teardown(self) -> None:
        """Close the model backend and the result cache (frees GPU memory under vLLM)."""
        close_all(getattr(self, "backend", None), getattr(self, "cache", None))

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: GraderParams = self.params  # type: ignore[assignment]
        ids, texts = batch.get_column("id").to_list(), batch.get_column("text").to_list()
        rows: list[dict[str, Any]] = [{} for _ in ids]
        jobs: list[tuple[int, list[str]]] = []
        for i, (doc_id, text) in enumerate(zip(ids, texts)):
            if not in_sample(doc_id, p.sample_rate):
                rows[i] = {"reason": "not_sampled"}
            elif not text.strip():
                rows[i] = {"reason": "empty_text"}
            else:
                jobs.append((i, self._pieces(text)))
        flat = [piece for _, pieces in jobs for piece in pieces]
        graded = self._grade(flat) if flat else []
        pos = 0
        for i, pieces in jobs:
            part = graded[pos:pos + len(pieces)]
            pos += len(pieces)
            values = [g["value"] for g in part if g["value"] is not None]
            first = part[0]
            rows[i] = {"value": sum(values) / len(values) if values else None, "label": first["label"],
                       "criteria": first["criteria"], "raw": None if values else first["raw"],
                       "reason": None if values else first["reason"]}
        return pl.DataFrame({
            "score": [r.get("value") for r in rows],
            "label": [r.get("label") for r in rows],
            "criteria": [json.dumps(r["criteria"]) if r.get("criteria") else None for r in rows],
            "raw": [r.get("raw") for r in rows],
            "grade_error": [r.get("reason") for r in rows],
            "model": [self.backend.model_id if r.get("value") is not None else None for r in rows],
        }, schema={"score": pl.Float64, "label": pl.String, "criteria": pl.String, "raw": pl.String,
                   "grade_error": pl.String, "model": pl.String})


def _as_dict(parsed: Parsed, raw: str) -> dict[str, Any]:
    return {"value": parsed.value, "label": parsed.label, "criteria": parsed.criteria, "raw": raw[:4000],
            "reason": parsed.reason}
