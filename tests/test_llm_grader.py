"""The LLM stages with a real model: SmolLM2-135M-Instruct on CPU through transformers, and the
same model behind an OpenAI-compatible HTTP server (failures and timeouts injected)."""
from __future__ import annotations

import math
import socket

import numpy as np
import polars as pl
import pytest

from engines.inference import InferenceConfig, SamplingParams, make_backend
from engines.stage import StageContext
from scorers.llm_grade import LLMGrader, in_sample
from tests.helpers import real_texts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    b = make_backend(InferenceConfig(batch_size=4, max_input_tokens=160))
    yield b
    b.close()


class Counting:
    """Wraps a backend and counts the prompts it is asked (to see what the cache saves)."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, 0
        self.config = inner.config

    @property
    def model_id(self):
        return self.inner.model_id

    def chat(self, convs, params):
        self.prompts += len(convs)
        return self.inner.chat(convs, params)

    def next_token_logprobs(self, convs, cands):
        self.prompts += len(convs)
        return self.inner.next_token_logprobs(convs, cands)

    def truncate(self, text, n):
        return self.inner.truncate(text, n)


def _batch(corpora, n_wiki=3, n_docs=2):
    texts = real_texts(corpora, "wiki_en", n_wiki) + real_texts(corpora, "python_docs", n_docs)
    return pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts})


def test_generation_is_real_and_deterministic(backend):
    conv = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}]]
    a = backend.chat(conv, SamplingParams(max_tokens=12))[0]
    b = backend.chat(conv, SamplingParams(max_tokens=12))[0]
    assert "Paris" in a.text and a.text == b.text and a.completion_tokens > 0


def test_yes_probability_matches_a_direct_forward_pass(backend):
    import torch
    conv = [{"role": "user", "content": "Is Madrid the capital of Spain? Answer Yes or No."}]
    [lp] = backend.next_token_logprobs([conv], ["Yes", "No"])
    tok, model = backend.tok, backend.model
    ids = tok(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False), return_tensors="pt",
              add_special_tokens=False)
    with torch.inference_mode():
        logp = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
    yes_ids = {tok.encode(f, add_special_tokens=False)[0] for f in ("Yes", "yes", " Yes", " yes")
               if len(tok.encode(f, add_special_tokens=False)) == 1}
    assert lp["Yes"] == pytest.approx(float(torch.logsumexp(logp[sorted(yes_ids)], 0)), abs=1e-4)


def test_text_logprobs_match_a_direct_forward_pass(backend, corpora):
    import torch
    text = real_texts(corpora, "wiki_en", 1)[0][:300]
    [lp] = backend.text_logprobs([text])
    ids = [backend.tok.bos_token_id] + backend.tok.encode(text, add_special_tokens=False)
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits[:-1], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    assert len(lp) == len(ids) - 1 and np.allclose(lp, ref, atol=1e-4)


def test_edu_grader_scores_real_text_and_caches(backend, corpora, tmp_path):
    counting = Counting(backend)
    stage = LLMGrader({"grader": "edu", "max_tokens": 48, "max_retries": 1})
    stage.setup(StageContext(cache_dir=str(tmp_path), extra={"backend": counting}))
    batch = _batch(corpora, 2, 1)
    out = stage.transform(batch)
    assert out.height == batch.height
    for row in out.iter_rows(named=True):
        if row["score"] is None:  # a tiny model may not follow the format: recorded, never fatal
            assert row["grade_error"] in {"no_score", "out_of_range", "refusal", "truncated_reply"} and row["raw"]
        else:
            assert row["score"] in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} and row["model"] == "smollm2-135m-instruct"
    first = counting.prompts
    assert first >= batch.height
    again = stage.transform(batch)
    assert counting.prompts == first  # everything came from the cache
    assert again.equals(out)


def test_truncated_replies_become_null_scores_with_reasons(backend, corpora, tmp_path):
    stage = LLMGrader({"grader": "multi", "max_tokens": 3, "max_retries": 1})
    stage.setup(StageContext(cache_dir=str(tmp_path), extra={"backend": backend}))
    out = stage.transform(_batch(corpora, 2, 0))
    assert out.get_column("score").null_count() == 2
    assert set(out.get_column("grade_error").to_list()) <= {"truncated_json", "bad_json"}
    assert all(r for r in out.get_column("raw").to_list())


def test_ask_llm_and_sampling(backend, corpora, tmp_path):
    stage = LLMGrader({"grader": "ask_llm", "sample_rate": 0.5})
    stage.setup(StageContext(cache_dir=str(tmp_path), extra={"backend": backend}))
    batch = pl.DataFrame({"id": [f"doc-{i}" for i in range(8)], "text": real_texts(corpora, "wiki_fr", 8)})
    out = stage.transform(batch)
    sampled = [in_sample(f"doc-{i}", 0.5) for i in range(8)]
    assert 0 < sum(sampled) < 8
    for s, row in zip(sampled, out.iter_rows(named=True)):
        if s:
            assert 0.0 < row["score"] < 1.0 and row["label"] in {"yes", "no"}
        else:
            assert row["score"] is None and row["grade_error"] == "not_sampled"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_backend_against_a_real_model_server(backend, corpora, tmp_path):
    from tests.openai_server import ServerThread, make_app
    app = make_app(backend)
    port = _free_port()
    cfg = InferenceConfig(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=3, timeout_s=30)
    with ServerThread(app, port):
        http = make_backend(cfg)
        app.state.fail_first = 2  # two 503s: retried with backoff, then answered
        conv = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}]]
        [g] = http.chat(conv, SamplingParams(max_tokens=12))
        assert g.finish_reason != "error" and g.text == backend.chat(conv, SamplingParams(max_tokens=12))[0].text
        assert app.state.requests == 3
        [lp] = http.next_token_logprobs([[{"role": "user", "content": "Is water wet? Answer Yes or No."}]], ["Yes", "No"])
        [ref] = backend.next_token_logprobs([[{"role": "user", "content": "Is water wet? Answer Yes or No."}]], ["Yes", "No"])
        assert lp["Yes"] == pytest.approx(ref["Yes"], abs=1e-3)
        text = real_texts(corpora, "wiki_en", 1)[0][:200]
        assert np.allclose(http.text_logprobs([text])[0], backend.text_logprobs([text])[0], atol=1e-4)
        assert http.count_tokens([text]) == backend.count_tokens([text])
        # A backend that times out: the grader records the reason and the run goes on.
        slow = make_backend(cfg.model_copy(update={"timeout_s": 0.5, "max_retries": 1}))
        app.state.delay_s = 1.5
        stage = LLMGrader({"grader": "edu", "max_retries": 0})
        stage.setup(StageContext(cache_dir=str(tmp_path), extra={"backend": slow}))
        stage.backend.truncate = lambda t, n: t[:400]  # tokenize calls would also be slow
        out = stage.transform(_batch(corpora, 2, 0))
        app.state.delay_s = 0.0
    assert out.get_column("score").null_count() == 2
    assert all(e.startswith("backend:") and "Timeout" in e for e in out.get_column("grade_error").to_list())
    assert not math.isnan(lp["No"])
