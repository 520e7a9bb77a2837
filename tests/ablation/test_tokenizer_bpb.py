"""The built-in tokenizer and bits per byte, checked against closed forms and transformers' loss."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ablations.evaluate import _windows, bits_per_byte, encode_heldout, summed_nll
from ablations.model import build_model
from ablations.tokenizer import ASSET, BUILTIN_VOCAB, EOS, builtin_reference_texts, read_texts, sha256_file, train_bpe
from tests.ablation.conftest import HELDOUT, REPO, tiny_config


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(ASSET))


def test_builtin_tokenizer_rebuilds_byte_for_byte_from_its_reference(tmp_path: Path) -> None:
    out = train_bpe(builtin_reference_texts(), tmp_path / "tokenizer.json")
    assert sha256_file(out) == sha256_file(ASSET)


def test_builtin_tokenizer_is_byte_level_and_lossless(tok, corpora: Path) -> None:
    assert tok.get_vocab_size() == BUILTIN_VOCAB and tok.token_to_id(EOS) == 0
    texts = []
    for name in ("wiki_fr", "wiki_es", "python_docs"):
        texts += read_texts(corpora / f"{name}.parquet")[:20]
    texts += ["日本語のテキストと Ελληνικά \x00 \ufffd", "tab\tand\r\nnewlines  "]
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        assert 0 not in ids and tok.decode(ids) == t


def _texts() -> list[str]:
    # Short Wikipedia summaries and long documentation pages (several windows each).
    return read_texts(HELDOUT)[:15] + read_texts(REPO / "demo" / "ablation" / "heldout_python_docs.jsonl")[:3]


def test_untrained_model_with_zero_output_layer_matches_the_closed_form(tok) -> None:
    import torch

    cfg = tiny_config(seq_len=32)
    model = build_model(cfg, BUILTIN_VOCAB, 0, seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits 0 everywhere: a uniform prediction over V ids
    texts = _texts()
    got = bits_per_byte(model.eval(), encode_heldout("x", texts, tok, 0), seq_len=32, batch_size=8, device="cpu")
    n_tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert got == pytest.approx(n_tokens * math.log2(BUILTIN_VOCAB) / n_bytes, rel=1e-6)


def test_bits_per_byte_equals_transformers_own_loss(tok) -> None:
    """Batched, padded, windowed NLL == the sum of transformers' per-window mean loss x targets."""
    import torch

    texts = _texts()
    enc = encode_heldout("x", texts, tok, 0)
    for seq_len in (512, 24):  # one window per short document; many windows per document
        cfg = tiny_config(seq_len=seq_len)
        model = build_model(cfg, BUILTIN_VOCAB, 0, seed=3).eval()
        want = 0.0
        for doc in enc.docs:
            for start in range(0, doc.size - 1, seq_len):
                w = torch.from_numpy(doc[start:start + seq_len + 1]).unsqueeze(0)
                with torch.no_grad():
                    loss = model(input_ids=w, labels=w).loss  # HF shifts the labels itself
                want += float(loss) * (w.shape[1] - 1)
        got, n = summed_nll(model, enc.docs, seq_len, batch_size=5, device="cpu")
        assert n == enc.n_tokens == sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
        assert got == pytest.approx(want, rel=2e-5)


def test_windows_predict_every_document_token_once() -> None:
    doc = np.arange(1, 60)
    wins = _windows([doc], 16)
    assert [w[0] for w in wins] == [1, 17, 33, 49] and sum(w.size - 1 for w in wins) == doc.size - 1
    assert np.array_equal(np.concatenate([wins[0]] + [w[1:] for w in wins[1:]]), doc)
