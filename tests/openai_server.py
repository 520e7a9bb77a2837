"""A small OpenAI-compatible server around the real CPU model, for testing the HTTP backend.

It answers /v1/chat/completions (with top logprobs of the first token), /v1/completions with
echo (prompt logprobs) and /tokenize, like ``vllm serve`` does, and can inject failures: the
first ``fail_first`` requests get HTTP 503, and every request can be delayed by ``delay_s``.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engines.inference.base import SamplingParams
from engines.inference.hf_backend import TransformersBackend


def make_app(backend: TransformersBackend) -> FastAPI:
    app = FastAPI()
    app.state.fail_first = 0
    app.state.delay_s = 0.0
    app.state.requests = 0
    lock = threading.Lock()

    async def gate() -> JSONResponse | None:
        app.state.requests += 1
        if app.state.delay_s:
            time.sleep(app.state.delay_s)
        if app.state.fail_first > 0:
            app.state.fail_first -= 1
            return JSONResponse({"error": "overloaded"}, status_code=503)
        return None

    @app.post("/v1/chat/completions")
    async def chat(req: Request) -> Any:
        if (r := await gate()) is not None:
            return r
        body = await req.json()
        with lock:
            if body.get("logprobs"):
                enc = backend._encode_chats([body["messages"]])
                torch = backend._torch
                with torch.inference_mode():
                    logp = torch.log_softmax(backend.model(**enc).logits[0, -1].float(), dim=-1)
                top = torch.topk(logp, int(body.get("top_logprobs", 5)))
                content = [{"token": "", "logprob": 0.0, "top_logprobs": [
                    {"token": backend.tok.decode([int(i)]), "logprob": float(v)} for v, i in zip(top.values, top.indices)]}]
                return {"choices": [{"message": {"content": ""}, "finish_reason": "length", "logprobs": {"content": content}}]}
            g = backend.chat([body["messages"]], SamplingParams(max_tokens=body.get("max_tokens", 16),
                                                                temperature=body.get("temperature", 0.0),
                                                                seed=body.get("seed", 0)))[0]
        return {"choices": [{"message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason}],
                "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens}}

    @app.post("/v1/completions")
    async def completions(req: Request) -> Any:
        if (r := await gate()) is not None:
            return r
        body = await req.json()
        with lock:
            [lp] = backend.text_logprobs([body["prompt"]])
        return {"choices": [{"text": "", "logprobs": {"token_logprobs": [None] + [float(x) for x in lp] + [-1.0]}}]}

    @app.post("/tokenize")
    async def tokenize(req: Request) -> Any:
        body = await req.json()
        toks = backend.tok.encode(body["prompt"], add_special_tokens=False)
        return {"tokens": toks, "count": len(toks)}

    return app


class ServerThread:
    def __init__(self, app: FastAPI, port: int):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        # uvicorn finishes the requests in flight before it stops (a client that timed out leaves its
        # request generating here): wait for them. A thread still inside torch when the interpreter
        # exits aborts the process ("terminate called without an active exception", exit 134).
        self.server.should_exit = True
        self.thread.join(timeout=300)
        if self.thread.is_alive():
            raise RuntimeError("the test model server did not stop within 300 s")


def is_finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))
