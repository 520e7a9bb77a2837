"""The fastText scoring stage against calling ``fasttext`` predict directly on the same texts.

Trains one quality classifier (Wikipedia + Python docs against word-shuffled Wikipedia) on real
text, then scores the same ``--docs`` real documents twice: with the raw model
(``model.predict(list_of_lines, k=2)`` after the same normalisation) and with the stage's
``transform`` (normalise, predict, probability, byte-weighted bucket). Prints docs/s for both
and the overhead ratio (target <= 1.3).

    .venv/bin/python benchmarks/fasttext_scoring.py --docs 20000
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.stage import StageContext  # noqa: E402
from scorers.fasttext_quality import FastTextQuality, normalise  # noqa: E402

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    texts = []
    for name in ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg"):
        texts += pq.read_table(CORPORA / f"{name}.parquet", columns=["text"]).column("text").to_pylist()
    rng = random.Random(0)
    good = texts[:3000]
    bad = []
    for t in texts[3000:6000]:
        w = t.split()
        rng.shuffle(w)
        bad.append(" ".join(w))
    train = pl.DataFrame({"id": [f"t{i}" for i in range(6000)], "text": good + bad,
                          "source": ["good"] * 3000 + ["bad"] * 3000})
    docs = [texts[i % len(texts)] for i in range(args.docs)]
    batch = pl.DataFrame({"id": [f"d{i}" for i in range(len(docs))], "text": docs})
    stage = FastTextQuality({"positive": ["good"], "negative": ["bad"]})
    with tempfile.TemporaryDirectory() as art:
        stage.fit(iter([train]), art)
        stage.setup(StageContext(artifact_dir=art))
        model = stage._model
        lines = normalise(batch.get_column("text"), stage.params.max_chars)  # type: ignore[attr-defined]

        def raw() -> None:
            model.predict(lines, k=2)

        def raw_user() -> None:  # what a caller must do at least: fastText rejects newlines
            model.predict([t.replace("\n", " ") for t in docs], k=2)

        def ours() -> None:
            for start in range(0, batch.height, 4096):  # the executor's batch size
                stage.transform(batch.slice(start, 4096))

        # The three are timed in turn, round after round, and each keeps its best round: on a shared
        # machine the load then changes under all three alike instead of under one block of runs.
        # Process CPU time is printed too: it moves far less than wall time when others load the machine.
        best, cpu = [float("inf")] * 3, [float("inf")] * 3
        for _ in range(args.repeat):
            for k, fn in enumerate((raw, raw_user, ours)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
                cpu[k] = min(cpu[k], time.process_time() - c0)
        t_raw, t_user, t_ours = best
    mb = sum(len(t.encode()) for t in docs) / 1e6
    print(f"{args.docs} real documents, {mb:.1f} MB")
    print(f"raw fasttext predict (pre-normalised lines): {args.docs / t_raw:,.0f} docs/s")
    print(f"raw fasttext predict (newlines replaced):    {args.docs / t_user:,.0f} docs/s")
    print(f"fasttext_quality stage transform:            {args.docs / t_ours:,.0f} docs/s")
    print(f"overhead ours/raw(newlines replaced) = {t_ours / t_user:.2f}x (target <= 1.3)")
    print(f"overhead ours/raw(pre-normalised)    = {t_ours / t_raw:.2f}x (the stage also lower-cases and cuts)")
    print(f"on process CPU time: ours/raw(newlines replaced) = {cpu[2] / cpu[1]:.2f}x, "
          f"ours/raw(pre-normalised) = {cpu[2] / cpu[0]:.2f}x; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
