"""A small OpenAI-compatible embedding server around the real CPU model, for testing the HTTP
backend's ``embed``: it answers ``/v1/embeddings`` like ``vllm serve MODEL --runner pooling``
does, and can inject failures (the first ``fail_first`` requests get HTTP 503; every request can
be delayed by ``delay_s``)."""
from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engines.inference.st_backend import SentenceTransformersBackend
from tests.openai_server import ServerThread

__all__ = ["ServerThread", "make_app"]


def make_app(backend: SentenceTransformersBackend) -> FastAPI:
    app = FastAPI()
    app.state.fail_first = 0
    app.state.delay_s = 0.0
    lock = threading.Lock()

    @app.post("/v1/embeddings")
    async def embeddings(req: Request) -> Any:
        if app.state.delay_s:
            time.sleep(app.state.delay_s)
        if app.state.fail_first > 0:
            app.state.fail_first -= 1
            return JSONResponse({"error": "overloaded"}, status_code=503)
        body = await req.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        with lock:
            vecs = backend.embed(inputs)
        # Answer in reverse order: clients must match vectors to inputs by index.
        data = [{"object": "embedding", "index": i, "embedding": vecs[i].tolist()} for i in reversed(range(len(inputs)))]
        return {"object": "list", "data": data, "model": body.get("model"),
                "usage": {"prompt_tokens": sum(backend.count_tokens(inputs)), "total_tokens": 0}}

    return app
