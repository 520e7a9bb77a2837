"""Training: bit-for-bit determinism, equal token budgets across releases, the schedule."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ablations.config import ScheduleSpec
from ablations.data import batches, document_stream
from ablations.runner import prepare, run_ablation
from ablations.train import lr_factor, train_run
from tests.ablation.conftest import REPO, tiny_config
from warehouse.catalog import Catalog


def _train(lake: Path, release: str, seed: int, tmp: Path):
    cfg = tiny_config()
    p = prepare([release], cfg, str(lake), str(tmp), log=lambda m: None)
    export_dir, info = p.exports[p.releases[0].label]
    stream = batches(lambda: document_stream(export_dir, info), batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                     steps=cfg.steps)
    from ablations.runner import _evaluator
    return train_run(cfg, stream, vocab_size=p.tokenizer.vocab_size, eos_id=0, seed=seed, device="cpu",
                     evaluate=_evaluator(p))


def test_same_release_config_and_seed_give_the_same_run_bit_for_bit(two_release_lake: Path, tmp_path: Path) -> None:
    import torch

    a = _train(two_release_lake, "en", 0, tmp_path)
    b = _train(two_release_lake, "en", 0, tmp_path)
    assert a.curve == b.curve and a.evals == b.evals  # exact float equality, every step
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = _train(two_release_lake, "en", 1, tmp_path)
    assert [x[2] for x in c.curve] != [x[2] for x in a.curve]
    assert c.curve[-1][1] == a.curve[-1][1]  # same tokens seen


@pytest.mark.slow
def test_a_fresh_process_reproduces_the_loss_curve(two_release_lake: Path, tmp_path: Path) -> None:
    here = _train(two_release_lake, "fr", 1, tmp_path)
    code = ("import json, sys; from pathlib import Path; from tests.ablation.test_train import _train; "
            f"o = _train(Path({str(two_release_lake)!r}), 'fr', 1, Path({str(tmp_path)!r})); "
            "print(json.dumps([o.curve, o.evals]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    curve, evals = json.loads(out.stdout.strip().splitlines()[-1])
    assert [tuple(x) for x in curve] == here.curve and [tuple(x) for x in evals] == here.evals


def test_every_release_gets_the_same_token_budget(two_release_lake: Path, tmp_path: Path) -> None:
    """Counted tokens, not rows: the releases differ in documents per token, the runs do not."""
    import pyarrow.parquet as pq

    lake = tmp_path / "lake"
    import shutil
    shutil.copytree(two_release_lake / "releases", lake / "releases")
    cfg = tiny_config(budget_tokens=5 * 4 * 64 + 100, seeds=[0])  # not a whole number of steps: rounded down
    fed: dict[str, int] = {}
    info = run_ablation(["en", "fr"], cfg, str(lake), catalog=Catalog(str(lake / "catalog.duckdb")), plot=False,
                        log=lambda m: None, progress=lambda r, s, step, tokens, loss: fed.__setitem__(r, tokens))
    assert fed == {"en/v1": 5 * 4 * 64, "fr/v1": 5 * 4 * 64} and info["budget_tokens"] == 5 * 4 * 64
    _, rows = Catalog(str(lake / "catalog.duckdb")).query(
        "SELECT release, tokens_seen, budget_tokens, steps FROM ablations ORDER BY release")
    assert rows == [("en/v1", 1280, 1280, 5), ("fr/v1", 1280, 1280, 5)]
    docs = {}
    for rel in ("en", "fr"):  # documents inside the budget: different per release
        exp = next((lake / "exports" / rel / "v1").glob("hf-*"))
        lens = np.concatenate([pq.read_table(f, columns=["n_tokens"]).column(0).to_numpy()
                               for f in sorted((exp / "data").glob("*.parquet"))])
        docs[rel] = int(np.searchsorted(np.cumsum(lens), 1281)) + 1
    assert docs["en"] != docs["fr"]


def test_learning_rate_schedule() -> None:
    s = ScheduleSpec(lr=1.0, warmup_fraction=0.1, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(5, 100, s) == pytest.approx(0.5) and lr_factor(10, 100, s) == pytest.approx(1.0)
    assert lr_factor(55, 100, s) == pytest.approx(0.1 + 0.9 * 0.5) and lr_factor(100, 100, s) == pytest.approx(0.1)
    lin = s.model_copy(update={"decay": "linear", "warmup_fraction": 0.0})
    assert lr_factor(50, 100, lin) == pytest.approx(0.1 + 0.9 * 0.5)
