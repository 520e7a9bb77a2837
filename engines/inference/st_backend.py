"""sentence-transformers on CPU: the embedding backend tests and the demo run with a real model.

Serves the ``embed`` task only (``chat``/log-probability calls raise: an embedding model does
not generate). ``embed`` calls ``SentenceTransformer.encode`` with ``normalize_embeddings`` on,
``batch_size`` texts per forward pass (sentence-transformers sorts a call's texts by length, so
padding stays small); inputs longer than the model's window (all-MiniLM-L6-v2: 256 word pieces
with [CLS] and [SEP]) are cut by the model, which is why the ``embed`` stage splits long documents
into ``token_spans`` first. ``token_spans`` uses one fast-tokenizer pass with character offsets.

Cost: all-MiniLM-L6-v2 embeds a few hundred short documents per second per core (see
benchmarks/semdedup.py for measured figures).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engines.extras import install_command
from engines.inference.base import Generation, InferenceBackend, InferenceConfig, Messages, SamplingParams
from engines.inference.models import resolve_model


def spans_from_offsets(tokenizer: Any, texts: list[str], max_tokens: int, max_chunks: int) -> list[list[str]]:
    """Cut each text into at most ``max_chunks`` pieces of at most ``max_tokens`` tokens, using a
    Hugging Face fast tokenizer's character offsets (one batched pass). A cut falls between two
    tokens with text between them (whitespace), moved back from the ``max_tokens`` mark if that
    splits a word (a word longer than a whole piece is cut where it must), so each piece
    tokenises on its own exactly as it did inside the document."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                    return_token_type_ids=False)
    out: list[list[str]] = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        n = len(offsets)
        if n <= max_tokens:
            out.append([text])
            continue
        pieces: list[str] = []
        first = 0
        while first < n and len(pieces) < max_chunks:
            end = min(n, first + max_tokens)  # the piece is tokens [first, end)
            if end < n:
                cut = end
                while cut > first + 1 and offsets[cut][0] <= offsets[cut - 1][1]:
                    cut -= 1
                end = cut if cut > first + 1 else end
            pieces.append(text[0 if first == 0 else offsets[first][0]:offsets[end - 1][1]])
            first = end
        out.append(pieces)
    return out


class SentenceTransformersBackend(InferenceBackend):
    def __init__(self, config: InferenceConfig, **_: Any):
        try:
            import torch
            import transformers
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("the sentence_transformers backend needs the `sentence-transformers` package: "
                              f"{install_command(['semantic'])}") from e
        # One progress bar per worker, and a warning per long document (we cut them ourselves into
        # token_spans), are noise in run logs.
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.model = SentenceTransformer(resolve_model(config.model), device="cpu")
        self.model.eval()
        self.tok = self.model.tokenizer

    @property
    def max_embed_tokens(self) -> int:
        """Tokens of text one input may hold (the model's window less [CLS] and [SEP])."""
        return int(self.model.max_seq_length or 256) - 2

    @property
    def dimension(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        return int(dim) if dim else int(self.embed(["x"]).shape[1])

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vecs = self.model.encode(texts, batch_size=self.config.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def token_spans(self, texts: list[str], max_tokens: int, max_chunks: int) -> list[list[str]]:
        return spans_from_offsets(self.tok, texts, max_tokens, max_chunks)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def truncate(self, text: str, max_tokens: int) -> str:
        return spans_from_offsets(self.tok, [text], max_tokens, 1)[0][0]

    def chat(self, conversations: list[Messages], params: SamplingParams) -> list[Generation]:
        raise NotImplementedError(f"{self.config.model!r} is an embedding model: it cannot generate")

    def next_token_logprobs(self, conversations: list[Messages], candidates: list[str]) -> list[dict[str, float]]:
        raise NotImplementedError(f"{self.config.model!r} is an embedding model: it has no next-token distribution")

    def text_logprobs(self, texts: list[str]) -> list[np.ndarray]:
        raise NotImplementedError(f"{self.config.model!r} is an embedding model: it has no token log-probabilities")
