"""The embedding task with the real model (all-MiniLM-L6-v2 from its PyPI wheel) on CPU, behind a
real local OpenAI-compatible HTTP server, and vLLM's request building and parsing."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from engines.inference import InferenceConfig, make_backend
from engines.inference.openai_backend import parse_embeddings
from engines.stage import StageContext
from scorers.embed import Embed
from tests.helpers import real_texts

pytestmark = pytest.mark.slow
ST = {"backend": "sentence_transformers", "model": "all-minilm-l6-v2", "batch_size": 16}


@pytest.fixture(scope="module")
def backend():
    return make_backend(InferenceConfig(**ST))


class Counting:
    """Wraps a backend and counts the texts it is asked to embed (to see what the cache saves)."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0
        self.config, self.model_id, self.max_embed_tokens = inner.config, inner.model_id, inner.max_embed_tokens

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)

    def token_spans(self, texts, n, k):
        return self.inner.token_spans(texts, n, k)


def _stage(tmp_path, backend, **params):
    st = Embed({"inference": ST, **params})
    st.setup(StageContext(cache_dir=str(tmp_path), extra={"backend": backend}))
    return st


def test_model_from_the_wheel_gives_sentence_transformers_vectors(backend, corpora):
    from sentence_transformers import SentenceTransformer

    from engines.inference.models import ensure_minilm
    texts = real_texts(corpora, "wiki_en", 20)
    ref = SentenceTransformer(str(ensure_minilm()), device="cpu").encode(texts, normalize_embeddings=True)
    got = backend.embed(texts)
    assert got.shape == (20, 384) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.allclose(got, ref, atol=1e-5)
    a, b, c = backend.embed(["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell today."])
    assert a @ b > 0.8 > 0.2 > a @ c  # a paraphrase is close, an unrelated sentence is not


def test_chunking_rule_covers_long_documents(backend, corpora):
    doc = max(real_texts(corpora, "python_docs", 40), key=len)
    tok = backend.tok
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 254
    pieces = backend.token_spans([doc], 254, 3)[0]
    assert len(pieces) == 3
    counts = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in pieces]
    assert all(c <= 254 for c in counts)
    # the pieces are consecutive: re-tokenised together they are the document's first tokens
    again = [t for p in pieces for t in tok(p, add_special_tokens=False)["input_ids"]]
    assert again == ids[:len(again)] and len(again) >= 0.9 * 3 * 254  # cuts move back to word starts


def test_embed_stage_pools_chunks_and_caches(tmp_path, backend, corpora):
    counting = Counting(backend)
    st = _stage(tmp_path, counting, max_chunks=4)
    texts = real_texts(corpora, "wiki_en", 30) + [max(real_texts(corpora, "python_docs", 40), key=len), "", "   "]
    batch = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
    out = st.transform(batch)
    assert out.schema["embedding"] == pl.Array(pl.Float16, 384)
    assert out.get_column("embed_error").to_list()[-2:] == ["empty_text", "empty_text"]
    assert out.get_column("embedding").null_count() == 2
    assert out.get_column("chunks").to_list()[30] == 4 and set(out.get_column("chunks").to_list()[:30]) == {1}
    # the long document's vector: the length-weighted mean of its pieces' vectors, normalised
    pieces = backend.token_spans([texts[30]], 254, 4)[0]
    w = np.array([len(p) for p in pieces], float)
    want = (backend.embed(pieces) * w[:, None]).sum(0)
    want /= np.linalg.norm(want)
    got = out.get_column("embedding").to_numpy()[30].astype(np.float32)
    assert np.allclose(got, want, atol=2e-3)
    asked = counting.texts
    again = st.transform(batch)
    assert counting.texts == asked  # all from the cache
    assert again.equals(out)
    st32 = _stage(tmp_path, counting, dtype="float32", max_chunks=4)
    out32 = st32.transform(batch.head(5))
    assert out32.schema["embedding"] == pl.Array(pl.Float32, 384)
    assert np.allclose(out32.get_column("embedding").to_numpy(), out.head(5).get_column("embedding").to_numpy(),
                       atol=1e-3)


def test_giant_document_is_not_tokenised_whole(tmp_path, backend):
    giant = "lorem ipsum dolor sit amet " * 800_000  # 21.6 MB of text
    out = _stage(tmp_path, backend).transform(pl.DataFrame({"id": ["g"], "text": [giant]}))
    assert out.get_column("chunks").to_list() == [8] and out.get_column("embed_error").to_list() == [None]


def test_a_failing_backend_costs_only_its_rows(tmp_path, backend, corpora):
    class HalfBroken(Counting):
        def embed(self, texts):
            v = self.inner.embed(texts)
            v[::2] = np.nan
            return v
    st = _stage(tmp_path, HalfBroken(backend))
    texts = real_texts(corpora, "wiki_fr", 6)
    out = st.transform(pl.DataFrame({"id": list("abcdef"), "text": texts}))
    err = out.get_column("embed_error").to_list()
    assert [e is not None for e in err] == [True, False] * 3
    assert out.get_column("embedding").null_count() == 3
    # failures are not cached: a healthy backend fills them in
    fixed = _stage(tmp_path, backend).transform(pl.DataFrame({"id": list("abcdef"), "text": texts}))
    assert fixed.get_column("embedding").null_count() == 0


def test_wrong_dimension_and_generative_backend_are_clear_errors(tmp_path, backend):
    st = Embed({"inference": ST, "dim": 768})
    st.setup(StageContext(cache_dir=str(tmp_path), extra={"backend": backend}))
    with pytest.raises(ValueError, match="dim"):
        st.transform(pl.DataFrame({"id": ["a"], "text": ["hello world"]}))
    with pytest.raises(ValueError, match="sentence_transformers"):
        Embed({"inference": {"backend": "transformers"}}).setup(StageContext(cache_dir=str(tmp_path)))


# --- a real HTTP server serving the real model -------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(backend):
    from tests.embedding_server import ServerThread, make_app
    app = make_app(backend)
    port = _free_port()
    with ServerThread(app, port):
        yield app, f"http://127.0.0.1:{port}/v1"


def test_openai_embeddings_match_local_model(server, backend, corpora, tmp_path):
    app, url = server
    remote = make_backend(InferenceConfig(backend="openai", model="all-minilm-l6-v2", base_url=url, batch_size=4,
                                          max_retries=3, timeout_s=30))
    texts = real_texts(corpora, "wiki_es", 10)
    assert np.allclose(remote.embed(texts), backend.embed(texts), atol=1e-5)
    app.state.fail_first = 2  # two 503s, then answers: retried
    assert np.isfinite(remote.embed(texts[:3])).all()
    st = Embed({"inference": {"backend": "openai", "model": "all-minilm-l6-v2", "base_url": url, "batch_size": 4,
                              "max_retries": 0, "timeout_s": 30}})
    st.setup(StageContext(cache_dir=str(tmp_path)))
    app.state.fail_first = 1  # the first request of the batch fails for good: its 4 rows only
    out = st.transform(pl.DataFrame({"id": [str(i) for i in range(10)], "text": texts}))
    assert out.get_column("embedding").null_count() == 4
    assert out.get_column("embed_error").null_count() == 6


def test_openai_server_timeout_is_an_error_row(server, corpora):
    app, url = server
    slow = make_backend(InferenceConfig(backend="openai", model="m", base_url=url, max_retries=0, timeout_s=0.2))
    app.state.delay_s = 1.0
    try:
        out = slow.embed(real_texts(corpora, "wiki_en", 2))
    finally:
        app.state.delay_s = 0.0
    assert out.shape[0] == 2 and np.isnan(out).all()


def test_embedding_reply_parsing():
    ok = {"data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3.0, 4.0]}]}
    assert np.allclose(parse_embeddings(ok, 2), [[0.6, 0.8], [0.0, 1.0]])
    for bad in ({"data": [{"index": 0, "embedding": [1.0, 0.0]}]}, {"nope": 1}, RuntimeError("503"),
                {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]},
                {"data": [{"index": 0, "embedding": ["x", 1]}, {"index": 1, "embedding": [1.0, 2.0]}]}):
        out = parse_embeddings(bad, 2)
        assert out.shape[0] == 2 and np.isnan(out).all()


# --- vLLM: request building and parsing (no GPU here; the engine is not started) --------------
def test_vllm_embedding_requests_and_parsing(backend):
    from engines.inference.vllm_backend import VLLMBackend, parse_vllm_embeddings

    calls = []

    class FakeLLM:  # stands in for vllm.LLM(runner="pooling"): records the prompts, returns vectors
        llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=16))

        def embed(self, prompts, use_tqdm=False):
            calls.append(prompts)
            return [SimpleNamespace(outputs=SimpleNamespace(embedding=[3.0, 4.0] if i else [])) for i, _ in
                    enumerate(prompts)]

    v = VLLMBackend.__new__(VLLMBackend)
    v.config, v.llm, v.tok = InferenceConfig(backend="vllm", model="x"), FakeLLM(), backend.tok
    reqs = v.embed_requests(["one two three", "word " * 100])
    cls, sep = backend.tok.cls_token_id, backend.tok.sep_token_id
    assert reqs[0]["prompt_token_ids"][0] == cls and reqs[0]["prompt_token_ids"][-1] == sep
    assert len(reqs[1]["prompt_token_ids"]) == 16  # cut to the window, special tokens included
    out = v.embed(["a", "b"])
    assert np.isnan(out[0]).all() and np.allclose(out[1], [0.6, 0.8])  # an empty vector is a failed row
    with pytest.raises(ValueError, match="2 inputs"):
        parse_vllm_embeddings([SimpleNamespace(outputs=SimpleNamespace(embedding=[1.0]))], 2)
    assert [len(p) for p in v.token_spans(["word " * 40], 16, 2)[0]] == [len("word " * 16) - 1, len("word " * 16) - 1]


def test_annotation_dtype_sizes(backend, corpora, tmp_path):
    """float16 halves the stored bytes; the cosines it changes move by well under 1e-3."""
    texts = real_texts(corpora, "wiki_en", 200)
    frame = pl.DataFrame({"id": [str(i) for i in range(200)], "text": texts})
    sizes, mats = {}, {}
    for dtype in ("float16", "float32"):
        out = _stage(tmp_path, backend, dtype=dtype).transform(frame)
        path = tmp_path / f"{dtype}.parquet"
        pa.parquet.write_table(out.to_arrow(), path, compression="zstd")
        sizes[dtype] = path.stat().st_size
        m = out.get_column("embedding").to_numpy().astype(np.float64)
        mats[dtype] = m / np.linalg.norm(m, axis=1, keepdims=True)
    assert sizes["float16"] < 0.6 * sizes["float32"]
    d = np.abs(mats["float16"] @ mats["float16"].T - mats["float32"] @ mats["float32"].T)
    assert d.max() < 1e-3
