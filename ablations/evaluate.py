"""Evaluating a checkpoint: bits per byte on held-out text, multiple-choice accuracy.

**Bits per byte.** Each held-out document is encoded, preceded by the end-of-text token (so its
first token is predicted too, from a document start as in training), and split into windows of
``seq_len`` predictions; window ``k`` sees only its own tokens as context (non-overlapping, like
lm-evaluation-harness's rolling log-likelihood). The summed negative log-likelihood of every
document token (nats) over ln 2, divided by the documents' UTF-8 bytes, is the bits per byte:
independent of the tokenizer's units, so runs with different tokenizers compare. Windows are
sorted by length and right-padded in batches; with causal attention padding after a token never
changes its prediction. The end-of-text token after a document is not scored.

**Multiple choice** (``ablations.mc``): lm-evaluation-harness on local task files.

Cost: one forward pass per window (no backward): about a third of a training step per token.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablations.config import HeldoutSpec
from ablations.data import AblationError
from ablations.tokenizer import read_texts


@dataclass
class EncodedText:
    """A held-out set, encoded once: per document the ids with a leading end-of-text, and bytes."""

    name: str
    docs: list[np.ndarray]
    n_bytes: int

    @property
    def n_tokens(self) -> int:
        """Predicted tokens (the leading end-of-text is context, not a target)."""
        return sum(d.size - 1 for d in self.docs)


def load_heldout(spec: HeldoutSpec, path: str) -> list[str]:
    if not Path(path).is_file():
        raise AblationError(f"held-out set {spec.name!r}: no file at {path}")
    try:
        texts = read_texts(path, spec.text_field)
    except KeyError as e:
        raise AblationError(f"held-out set {spec.name!r}: {e.args[0]}") from None
    if spec.max_docs:
        texts = texts[:spec.max_docs]
    if not texts:
        raise AblationError(f"held-out set {spec.name!r} ({path}) has no non-empty text in {spec.text_field!r}")
    return texts


def encode_heldout(name: str, texts: Sequence[str], tokenizer: Any, eos_id: int) -> EncodedText:
    """Encode with a ``tokenizers.Tokenizer`` (no special tokens added), one leading end-of-text."""
    encs = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    docs = [np.asarray([eos_id, *e.ids], dtype=np.int64) for e in encs]
    return EncodedText(name, docs, sum(len(t.encode("utf-8")) for t in texts))


def _windows(docs: list[np.ndarray], seq_len: int) -> list[np.ndarray]:
    """Non-overlapping windows of at most seq_len + 1 ids (seq_len predictions each)."""
    out = []
    for d in docs:
        for start in range(0, d.size - 1, seq_len):
            out.append(d[start:start + seq_len + 1])
    return out


def summed_nll(model: Any, docs: list[np.ndarray], seq_len: int, batch_size: int, device: str) -> tuple[float, int]:
    """(sum of -log p(token) in nats over every predicted token, number of predicted tokens)."""
    import torch
    import torch.nn.functional as F

    wins = sorted(_windows(docs, seq_len), key=len)
    total = 0.0
    count = 0
    for i in range(0, len(wins), batch_size):
        group = wins[i:i + batch_size]
        width = max(w.size for w in group) - 1
        x = np.zeros((len(group), width), dtype=np.int64)
        y = np.full((len(group), width), -100, dtype=np.int64)
        for r, w in enumerate(group):
            x[r, :w.size - 1] = w[:-1]
            y[r, :w.size - 1] = w[1:]
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(x).to(device)).logits.float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).to(device).reshape(-1),
                                  ignore_index=-100, reduction="sum")
        total += float(nll.double().item())
        count += int((y != -100).sum())
    return total, count


def bits_per_byte(model: Any, text: EncodedText, seq_len: int, batch_size: int, device: str) -> float:
    nll, n = summed_nll(model, text.docs, seq_len, batch_size, device)
    assert n == text.n_tokens
    return nll / math.log(2) / text.n_bytes
