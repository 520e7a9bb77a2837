"""A backend that answers with canned replies: for the post-filter and parsing tests only (the
methods' prompts and the whole stage are tested with the real model elsewhere)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from engines.inference import Generation, InferenceBackend, InferenceConfig, SamplingParams
from engines.inference.base import Messages

Reply = Generation | str


class CannedBackend(InferenceBackend):
    """``answer(messages) -> Generation or text`` decides each reply; tokens are whitespace words."""

    def __init__(self, answer: Callable[[Messages], Reply]):
        self.config = InferenceConfig(model="canned")
        self.answer = answer
        self.prompts: list[Messages] = []

    def chat(self, conversations: list[Messages], params: SamplingParams) -> list[Generation]:
        out = []
        for c in conversations:
            self.prompts.append(c)
            r = self.answer(c)
            g = r if isinstance(r, Generation) else Generation(r, "stop", 10, len(r.split()))
            out.append(g)
        return out

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def truncate(self, text: str, max_tokens: int) -> str:
        words = text.split(" ")
        return text if len(text.split()) <= max_tokens else " ".join(words[:max_tokens])

    def next_token_logprobs(self, conversations: list[Messages], candidates: list[str]) -> list[dict[str, float]]:
        raise NotImplementedError

    def text_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError
