"""Choose the proxy model's peak learning rate on data that is in neither arm of the experiment.

Trains the ablation config's model (one seed, same budget and schedule) on a neutral release of
English Wikipedia summaries (rows 1,000-2,499 of shared/corpora/wiki_en.parquet: not in the demo
corpus, the held-out sets or the cloze task) for each learning rate, and prints the bits per
byte on a validation slice (rows 9,000-9,199, also unused elsewhere). The experiment then uses
the best rate for both arms; nothing of either arm is looked at.

Usage: .venv/bin/python demo/ablation/tune_lr.py [--corpora ../shared/corpora] [--lrs 0.003,0.01,0.03]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import polars as pl

from ablations.config import load_ablation_config
from ablations.runner import run_ablation
from schemas.documents import DOCUMENT
from warehouse.release import RELEASE_SCHEMA

HERE = Path(__file__).resolve().parent


def neutral_release(lake: Path, corpora: Path) -> None:
    texts = pl.read_parquet(corpora / "wiki_en.parquet", columns=["text"]).get_column("text").to_list()[1000:2500]
    n = len(texts)
    df = pl.DataFrame({
        "id": [hashlib.sha256(t.encode()).hexdigest()[:32] for t in texts], "text": texts, "source": ["wiki_en"] * n,
        "url": [None] * n, "domain": [None] * n, "lang": [None] * n, "crawl_date": [None] * n, "license": [None] * n,
        "meta": [None] * n, "ingest_run": ["neutral"] * n, "src_file": ["wiki_en.parquet"] * n,
        "src_offset": list(range(1000, 2500))}, schema=pl.Schema(DOCUMENT)).with_columns(
        pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias("n_tokens"))
    out = lake / "releases" / "neutral" / "v1"
    out.mkdir(parents=True)
    df.to_arrow().cast(RELEASE_SCHEMA)  # the release schema, checked
    df.write_parquet(out / "shard-000000.parquet")
    manifest = {"name": "neutral", "version": "v1", "content_hash": "neutral-wiki-1000-2500", "selection": "true",
                "order": "ingest", "totals": {"rows": n, "tokens": int(df["n_tokens"].sum())},
                "shards": [{"file": "shard-000000.parquet", "rows": n}]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    val = pl.read_parquet(corpora / "wiki_en.parquet", columns=["text"]).slice(9000, 200)
    val.write_ndjson(lake / "validation.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", default=os.environ.get("CURATE_CORPORA") or str(HERE.parents[2] / "shared" / "corpora"))
    ap.add_argument("--lrs", default="0.003,0.01,0.03")
    args = ap.parse_args()
    base = load_ablation_config(HERE / "ablation.yaml")
    with tempfile.TemporaryDirectory(prefix="curate-tune-lr-") as tmp:
        lake = Path(tmp)
        neutral_release(lake, Path(args.corpora))
        for lr in (float(x) for x in args.lrs.split(",")):
            cfg = base.model_copy(update={
                "seeds": [0], "decontamination": "off", "keep_checkpoint": False,
                "schedule": base.schedule.model_copy(update={"lr": lr}),
                "eval": base.eval.model_copy(update={"points": 1, "benchmarks": [], "heldout": [
                    base.eval.heldout[0].model_copy(update={"name": "validation", "path": str(lake / "validation.jsonl")})]})})
            info = run_ablation(["neutral/v1"], cfg, str(lake), log=lambda m: None, plot=False)
            bpb = next(r["mean"] for r in info["summary"] if r["metric"] == "bpb/validation")
            loss = next(r["mean"] for r in info["summary"] if r["metric"] == "train/loss")
            print(f"lr {lr:g}: validation bits per byte {bpb:.4f}, last training loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
