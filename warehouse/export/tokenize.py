"""Batched tokenisation with Hugging Face ``tokenizers`` for the tokenised export formats.

``TextTokenizer`` wraps a ``tokenizer.json`` (the file named in the config). ``encode`` takes a
list of texts and returns the token ids of all of them as one flat NumPy array plus the length
of each document, which is what the Megatron and MDS writers need, without building a Python
list per document. Encoding uses ``encode_batch_fast`` (no character offsets) where the library
has it, so the Rust side runs the batch on all cores; batches are large (16,384 documents, in
practice a whole release shard) because small batches leave cores idle at each batch's tail; special tokens of the tokenizer's
post-processor are not added, and ``append_eos`` (default on) ends every document with the
end-of-text token, as Megatron's ``--append-eod`` does.

The end-of-text token is ``eos_token`` if given, else the first of ``<|endoftext|>``, ``</s>``,
``<eos>``, ``<|end_of_text|>`` that the vocabulary has; a tokenizer with none of them needs
``eos_token`` or ``append_eos=False``. Ids are stored as ``uint16`` when the vocabulary fits
(< 65,500 ids, the rule Megatron uses), else ``int32``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from engines.extras import check as check_extras

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` loaded from a file, with the export's encoding conventions."""

    def __init__(self, path: str | Path, *, append_eos: bool = True, eos_token: str | None = None,
                 batch_size: int = 16384):
        check_extras("a tokenised export", {"export": ("tokenizers",)})
        from tokenizers import Tokenizer

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self.tok = Tokenizer.from_file(str(self.path))
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))
        self.append_eos = append_eos
        self.batch_size = batch_size
        self.eos_token: str | None = None
        self.eos_id: int | None = None
        if append_eos:
            names = [eos_token] if eos_token else list(EOS_CANDIDATES)
            for name in names:
                tid = self.tok.token_to_id(name)
                if tid is not None:
                    self.eos_token, self.eos_id = name, int(tid)
                    break
            if self.eos_id is None:
                raise ValueError(f"tokenizer {self.path} has no end-of-text token among {names}; "
                                 "name one with eos_token or set append_eos=False")
        self.dtype = np.dtype(np.uint16) if self.vocab_size < 65500 else np.dtype(np.int32)
        self._fast = hasattr(self.tok, "encode_batch_fast")
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the tokenizer."""
        return {"file": self.path.name, "sha256": self.sha256, "vocab_size": self.vocab_size,
                "append_eos": self.append_eos, "eos_token": self.eos_token, "eos_id": self.eos_id,
                "dtype": self.dtype.name, "library": "tokenizers"}

    def _encode_batch(self, texts: list[str]) -> list[Any]:
        if self._fast:
            return self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return self.tok.encode_batch(texts, add_special_tokens=False)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of all texts, concatenated, and the number of ids per text (EOS included)."""
        flats: list[np.ndarray] = []
        lens: list[np.ndarray] = []
        extra = 1 if self.append_eos else 0
        for i in range(0, len(texts), self.batch_size):
            chunk = list(texts[i:i + self.batch_size])
            encs = self._encode_batch(chunk)
            n = np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(encs))
            if self.append_eos:
                eos = [self.eos_id]
                ids = chain.from_iterable(chain(e.ids, eos) for e in encs)
            else:
                ids = chain.from_iterable(e.ids for e in encs)
            flats.append(np.fromiter(ids, dtype=self.dtype, count=int(n.sum()) + extra * len(encs)))
            lens.append(n + extra)
        if not flats:
            return np.empty(0, dtype=self.dtype), np.empty(0, dtype=np.int64)
        return np.concatenate(flats), np.concatenate(lens)

    def encode_list(self, texts: Sequence[str]) -> list[list[int]]:
        """Per-document id lists (for tests and small inputs)."""
        flat, lens = self.encode(texts)
        offs = np.concatenate([[0], np.cumsum(lens)])
        return [flat[offs[i]:offs[i + 1]].tolist() for i in range(len(lens))]
