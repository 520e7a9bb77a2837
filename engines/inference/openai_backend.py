"""An OpenAI-compatible HTTP server (what ``vllm serve`` exposes) as a backend.

Requests run concurrently (at most ``max_concurrency`` in flight) with a per-request timeout;
429, 5xx, timeouts and connection errors are retried ``max_retries`` times with exponential
backoff and jitter. A request that still fails becomes a ``Generation`` with ``finish_reason=
"error"`` and the error text: the stage records a null score with the reason, the run goes on.

Token counting and truncation use the server's ``/tokenize`` endpoint (vLLM has one); servers
without it fall back to 4 characters per token, a documented approximation.

Embeddings (``embed``) go to ``/embeddings`` (``vllm serve MODEL --runner pooling`` serves it),
``batch_size`` texts per request; the vectors are re-normalised here (servers differ on whether
they normalise), matched to their inputs by ``index``, and a request that still fails after its
retries gives rows of NaN (the stage records the error for those documents only).
"""
from __future__ import annotations

import asyncio
import math
import os
import random
from typing import Any

import httpx
import numpy as np

from engines.inference.base import Generation, InferenceBackend, InferenceConfig, Messages, SamplingParams
from engines.inference.base import normalise_rows as normalise_rows

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
CHARS_PER_TOKEN = 4


class OpenAIBackend(InferenceBackend):
    def __init__(self, config: InferenceConfig, **_: Any):
        self.config = config
        key = os.environ.get(config.api_key_env, "EMPTY")
        self._headers = {"Authorization": f"Bearer {key}"}
        self._base = config.base_url.rstrip("/")
        self._can_tokenize: bool | None = None

    # --- transport -------------------------------------------------------------------------
    async def _post(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, path: str, body: dict) -> dict:
        last = ""
        for attempt in range(self.config.max_retries + 1):
            async with sem:
                try:
                    r = await client.post(f"{self._base}{path}", json=body, headers=self._headers,
                                          timeout=self.config.timeout_s)
                    if r.status_code == 200:
                        return r.json()
                    last = f"HTTP {r.status_code}: {r.text[:300]}"
                    if r.status_code not in RETRYABLE:
                        break
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    last = f"{type(e).__name__}: {e}"
            if attempt < self.config.max_retries:
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))
        raise RuntimeError(f"{path} failed after {self.config.max_retries + 1} attempts: {last}")

    def _run_all(self, path: str, bodies: list[dict]) -> list[dict | BaseException]:
        async def go() -> list[dict | BaseException]:
            sem = asyncio.Semaphore(self.config.max_concurrency)
            limits = httpx.Limits(max_connections=self.config.max_concurrency)
            async with httpx.AsyncClient(limits=limits) as client:
                return await asyncio.gather(*(self._post(client, sem, path, b) for b in bodies), return_exceptions=True)
        return asyncio.run(go())

    # --- interface ---------------------------------------------------------------------------
    def chat(self, conversations: list[Messages], params: SamplingParams) -> list[Generation]:
        return self.chat_each(conversations, [params] * len(conversations))

    def chat_each(self, conversations: list[Messages], params: list[SamplingParams]) -> list[Generation]:
        bodies = [chat_body(self.config.model, c, p) for c, p in zip(conversations, params)]
        out = []
        for r in self._run_all("/chat/completions", bodies):
            if isinstance(r, BaseException):
                out.append(Generation(text="", finish_reason="error", error=str(r)))
                continue
            choice = r["choices"][0]
            usage = r.get("usage") or {}
            out.append(Generation(text=choice["message"].get("content") or "",
                                  finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                                  prompt_tokens=usage.get("prompt_tokens", 0),
                                  completion_tokens=usage.get("completion_tokens", 0)))
        return out

    def next_token_logprobs(self, conversations: list[Messages], candidates: list[str]) -> list[dict[str, float]]:
        bodies = [{"model": self.config.model, "messages": c, "max_tokens": 1, "temperature": 0,
                   "logprobs": True, "top_logprobs": 20} for c in conversations]
        out = []
        for r in self._run_all("/chat/completions", bodies):
            if isinstance(r, BaseException):
                out.append({c: float("nan") for c in candidates})
                continue
            content = (r["choices"][0].get("logprobs") or {}).get("content") or [{}]
            top = content[0].get("top_logprobs") or []
            row = {}
            for cand in candidates:
                forms = {cand.lower(), cand.capitalize(), cand}
                ps = [math.exp(t["logprob"]) for t in top if t["token"].strip() in forms]
                row[cand] = math.log(sum(ps)) if ps else float("-inf")
            out.append(row)
        return out

    def text_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        bodies = [{"model": self.config.model, "prompt": t, "max_tokens": 1, "echo": True, "logprobs": 0,
                   "temperature": 0} for t in texts]
        out = []
        for r in self._run_all("/completions", bodies):
            if isinstance(r, BaseException):
                out.append(np.full(0, np.nan))
                continue
            lps = r["choices"][0]["logprobs"]["token_logprobs"]
            # echo returns the prompt's tokens then the one generated token; the first has no logprob.
            out.append(np.array([x for x in lps[1:-1] if x is not None], dtype=np.float64))
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        step = self.config.batch_size
        batches = [texts[i:i + step] for i in range(0, len(texts), step)]
        bodies = [{"model": self.config.model, "input": b, "encoding_format": "float"} for b in batches]
        rows: list[np.ndarray] = []
        dim = 0
        for batch, r in zip(batches, self._run_all("/embeddings", bodies)):
            rows.append(parse_embeddings(r, len(batch)))
            dim = dim or rows[-1].shape[1]
        out = [r if r.shape[1] else np.full((len(r), max(dim, 1)), np.nan, dtype=np.float32) for r in rows]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def _tokenize(self, texts: list[str]) -> list[list[int]] | None:
        if self._can_tokenize is False:
            return None
        base = self._base[:-3] if self._base.endswith("/v1") else self._base
        try:
            res = []
            with httpx.Client(timeout=self.config.timeout_s) as c:
                for t in texts:
                    r = c.post(f"{base}/tokenize", json={"model": self.config.model, "prompt": t}, headers=self._headers)
                    r.raise_for_status()
                    res.append(r.json()["tokens"])
            self._can_tokenize = True
            return res
        except (httpx.HTTPError, KeyError, ValueError):
            self._can_tokenize = False
            return None

    def count_tokens(self, texts: list[str]) -> list[int]:
        toks = self._tokenize(texts)
        return [len(t) for t in toks] if toks is not None else [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        n = self.count_tokens([text])[0]
        if n <= max_tokens:
            return text
        # Cut proportionally, then shrink until it fits (at most a few /tokenize calls).
        cut = int(len(text) * max_tokens / n)
        while cut > 0 and self.count_tokens([text[:cut]])[0] > max_tokens:
            cut = int(cut * 0.95)
        return text[:cut]


def parse_embeddings(reply: dict | BaseException, n: int) -> np.ndarray:
    """The (n, dim) normalised vectors of one ``/embeddings`` reply, ordered by ``index``; NaN
    rows for a failed request or a reply that does not hold n vectors of one length (shape
    (n, 0) when not even the dimension is known)."""
    try:
        if isinstance(reply, BaseException):
            raise ValueError(str(reply))
        data = sorted(reply["data"], key=lambda d: d["index"])
        vecs = np.array([d["embedding"] for d in data], dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != n or not np.isfinite(vecs).all():
            raise ValueError(f"expected {n} vectors of one length, got shape {vecs.shape}")
        return normalise_rows(vecs)
    except (ValueError, KeyError, TypeError):
        dim = 0
        if isinstance(reply, dict):
            try:
                dim = len(reply["data"][0]["embedding"])
            except (KeyError, IndexError, TypeError):
                dim = 0
        return np.full((n, dim), np.nan, dtype=np.float32)


def chat_body(model: str, messages: Messages, p: SamplingParams) -> dict[str, Any]:
    """One ``/chat/completions`` request. A ``regex`` constraint is sent as vLLM's structured
    outputs field (``"structured_outputs": {"regex": ...}``, vLLM >= 0.12 servers); a server that
    does not know the field rejects or ignores it, and the caller's parser stays the judge of
    the reply (ProX programs are parsed either way)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": p.temperature, "top_p": p.top_p,
                            "max_tokens": p.max_tokens, "seed": p.seed}
    if p.stop:
        body["stop"] = list(p.stop)
    if p.frequency_penalty != 0.0:  # a vLLM server's extra sampling parameter
        body["frequency_penalty"] = p.frequency_penalty
    if p.regex is not None:
        body["structured_outputs"] = {"regex": p.regex}
    return body
