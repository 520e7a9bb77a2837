"""How each fastText storage choice (``store: raw | zstd | quantized``) compares: size on disk,
time to store, held-out AUC, and agreement with the full model's scores.

Trains one classifier on real Wikipedia summaries (``--train`` documents; topics People,
History, Arts, Society, Philosophy against the rest: a task with scores spread over (0, 1)),
stores it each way with ``scorers.model_store.save_fasttext``, loads it back with
``load_fasttext`` and scores the held-out documents. Prints one row per store (the numbers in
docs/nightly.md, "Model storage").

    .venv/bin/python benchmarks/model_store.py --train 8000
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scorers.fasttext_quality import LABELS, _FastTextScorer, auc, normalise  # noqa: E402
from scorers.model_store import FILES, _ranks, load_fasttext, save_fasttext  # noqa: E402

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))
POSITIVE = {"People", "History", "Arts", "Society and social sciences", "Philosophy and religion"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--cutoff", type=int, default=100_000)
    args = ap.parse_args()
    import fasttext

    rows = pq.read_table(CORPORA / "wiki_en.parquet", columns=["text", "topic"]).to_pylist()
    order = np.random.default_rng(0).permutation(len(rows))
    train, held = [rows[i] for i in order[:args.train]], [rows[i] for i in order[args.train:]]
    texts = normalise(pl.Series([r["text"] for r in train]), 10_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/train.txt"
        with open(path, "w", encoding="utf-8") as f:
            for r, t in zip(train, texts):
                f.write(f"{LABELS[0] if r['topic'] in POSITIVE else LABELS[1]} {t}\n")
        model = fasttext.train_supervised(input=path, lr=0.1, dim=64, epoch=5, wordNgrams=2, thread=1, seed=0,
                                          verbose=0)
        held_texts = normalise(pl.Series([r["text"] for r in held]), 10_000)
        y = np.array([r["topic"] in POSITIVE for r in held])
        full = _FastTextScorer._predict(model, held_texts)
        top = full >= np.quantile(full, 0.7)
        print(f"{len(train)} training and {len(held)} held-out documents; CPU: "
              f"{_cpu()}; load average {os.getloadavg()[0]:.1f}")
        print("| store | size MB | store s (wall) | store s (CPU) | held-out AUC | Spearman vs full | top-30% agrees |")
        print("|---|---|---|---|---|---|---|")
        for store in ("raw", "zstd", "quantized"):
            folder = f"{tmp}/{store}"
            os.makedirs(folder)
            cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
            save_fasttext(fasttext.load_model(_raw(model, tmp)), folder, store, args.cutoff)  # type: ignore[arg-type]
            wall, cpu = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0
            s = _FastTextScorer._predict(load_fasttext(folder), held_texts)
            size = os.path.getsize(f"{folder}/{FILES[store]}") / 1e6
            rho = float(np.corrcoef(_ranks(full), _ranks(s))[0, 1])
            agree = float(((s >= np.quantile(s, 0.7)) == top).mean())
            print(f"| {store} | {size:.1f} | {wall:.1f} | {cpu:.1f} | {auc(s, y):.4f} | {rho:.4f} | {agree:.3f} |")


def _raw(model, tmp: str) -> str:
    path = f"{tmp}/full.bin"
    if not os.path.exists(path):
        model.save_model(path)
    return path


def _cpu() -> str:
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown"
    return name


if __name__ == "__main__":
    main()
