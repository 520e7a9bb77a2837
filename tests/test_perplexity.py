"""Bits per byte with the real tiny model: real text scores lower than the same words shuffled."""
from __future__ import annotations

import math
import random

import polars as pl
import pytest

from engines.inference import InferenceConfig, make_backend
from engines.stage import StageContext
from scorers.perplexity import Perplexity, bits_per_byte
from tests.helpers import real_texts

pytestmark = pytest.mark.slow


def test_bits_per_byte_closed_form():
    text = "abcd"  # 4 bytes; two tokens of probability 1/2 and 1/4 -> 3 bits -> 0.75 bits per byte
    assert bits_per_byte([math.log(0.5), math.log(0.25)], text) == pytest.approx(0.75)
    assert bits_per_byte([], "") is None


def test_real_text_beats_shuffled_words(corpora, tmp_path):
    backend = make_backend(InferenceConfig())
    texts = real_texts(corpora, "wiki_en", 6) + real_texts(corpora, "python_docs", 2)
    texts = [t[:1500] for t in texts]
    rng = random.Random(0)
    shuffled = []
    for t in texts:
        w = t.split()
        rng.shuffle(w)
        shuffled.append(" ".join(w))
    stage = Perplexity({"max_input_tokens": 128})
    stage.setup(StageContext(cache_dir=str(tmp_path), extra={"backends": {"smollm2": backend}}))
    batch = pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))] + [f"s{i}" for i in range(len(texts))] + ["e"],
                          "text": texts + shuffled + ["   "]})
    out = stage.transform(batch)
    real, shuf = out["bpb"][:len(texts)].to_list(), out["bpb"][len(texts):2 * len(texts)].to_list()
    assert all(r < s for r, s in zip(real, shuf)), (real, shuf)
    assert all(0.2 < r < 3.0 for r in real)
    assert out["bpb"][-1] is None and out["ppl_error"][-1] == "empty_text"
    assert out["bpb"].to_list()[:-1] == out["bpb__smollm2"].to_list()[:-1]
