"""Multiple-choice accuracy through lm-evaluation-harness, checked against a direct computation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ablations.config import BenchmarkSpec
from ablations.data import AblationError
from ablations.mc import prepare_task
from ablations.model import build_model
from ablations.tokenizer import ASSET
from tests.ablation.conftest import REPO, tiny_config

TASK = REPO / "demo" / "ablation" / "cloze_mc.yaml"


def _reference(model, tok, rows: list[dict], seq_len: int) -> tuple[float, float]:
    """acc and acc_norm from summed log-probabilities of each choice after its context."""
    import torch

    acc = acc_norm = 0
    for r in rows:
        lls = []
        for choice in r["choices"]:
            ctx = [0] + tok.encode(r["context"], add_special_tokens=False).ids  # after an end-of-text, as in training
            whole = [0] + tok.encode(r["context"] + " " + choice, add_special_tokens=False).ids
            cont = whole[len(ctx):]
            seq = (ctx + cont)[-(seq_len + 1):]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([seq[:-1]])).logits[0].double(), -1)
            lls.append(sum(float(logp[len(seq) - 1 - len(cont) + i, t]) for i, t in enumerate(cont)))
        lens = np.array([len(c) for c in r["choices"]], dtype=float)
        acc += int(np.argmax(lls) == r["label"])
        acc_norm += int(np.argmax(np.array(lls) / lens) == r["label"])
    return acc / len(rows), acc_norm / len(rows)


def test_lm_eval_accuracy_equals_a_direct_log_likelihood_argmax(tmp_path: Path) -> None:
    from ablations.mc import evaluate_task
    from warehouse.export.tokenize import TextTokenizer

    cfg = tiny_config(seq_len=128)
    tt = TextTokenizer(ASSET)
    model = build_model(cfg, tt.vocab_size, 0, seed=5).eval()
    task = prepare_task(BenchmarkSpec(name="cloze", task=str(TASK), limit=40), str(TASK))
    got = evaluate_task(model, tt, task, cfg, "cpu", str(tmp_path))
    rows = [json.loads(line) for line in (REPO / "demo" / "ablation" / "cloze_mc.jsonl").read_text().splitlines()[:40]]
    acc, acc_norm = _reference(model, tt.tok, rows, cfg.seq_len)
    assert got == {"acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm)}


def test_task_files_that_run_code_or_download_are_refused(tmp_path: Path) -> None:
    code = tmp_path / "code.yaml"
    code.write_text("task: x\noutput_type: multiple_choice\nprocess_docs: !function utils.process\n")
    with pytest.raises(AblationError, match="!function"):
        prepare_task(BenchmarkSpec(name="x", task=str(code)), str(code))
    hub = tmp_path / "hub.yaml"
    hub.write_text("task: y\noutput_type: multiple_choice\ndataset_path: allenai/ai2_arc\n")
    with pytest.raises(AblationError, match="local data"):
        prepare_task(BenchmarkSpec(name="y", task=str(hub)), str(hub))
    gone = tmp_path / "gone.yaml"
    gone.write_text("include: base.yaml\n")
    (tmp_path / "base.yaml").write_text("task: z\noutput_type: multiple_choice\ndataset_path: json\n"
                                        "dataset_kwargs: {data_files: {test: nowhere.jsonl}}\n")
    with pytest.raises(AblationError, match="data file not found: .*nowhere.jsonl"):
        prepare_task(BenchmarkSpec(name="z", task=str(gone)), str(gone))
