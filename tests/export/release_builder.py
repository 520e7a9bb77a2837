"""Build a small release folder of real text the way a release step with planning would.

Used by the export tests and ``benchmarks/export.py``. It reads a few hundred documents from
``shared/corpora`` as three sources, plans a UniMax mixture with an end phase that upsamples
Wikipedia, samples documents with repeats (epoch cap 3), scores their compression ratio with
the ``difficulty`` stage's function, orders phase 0 by folding on it and the end phase at
random, and writes ``shard-NNNNNN.parquet`` files (the document columns + ``n_tokens``) and a
``manifest.json`` with the same fields ``warehouse.release`` writes, plus ``mixture``,
``sampling``, ``curriculum`` and ``phases``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from planning.curriculum import CurriculumConfig, order_release
from planning.mixture import end_phase_upsampling, unimax
from planning.sampling import phase_boundaries, plan_sampling, sample_source
from schemas.documents import DOCUMENT
from scorers.difficulty import compression_ratios
from warehouse.release import RELEASE_SCHEMA

SOURCES = {"wiki_en": 160, "wiki_fr": 80, "python_docs": 24}


def source_documents(corpora: Path, source: str, n: int, repeat: int = 1) -> pl.DataFrame:
    """``n`` documents of a corpus file as DOCUMENT rows (ids as the readers make them)."""
    t = pl.read_parquet(corpora / f"{source}.parquet", columns=["text"]).head(n)
    texts = [x for _ in range(repeat) for x in t.get_column("text").to_list()]
    keys = [f"{source}.parquet:{i}" for i in range(len(texts))]
    ids = [hashlib.sha256(f"{source}\x1f{k}".encode()).hexdigest()[:32] for k in keys]
    m = len(texts)
    return pl.DataFrame({
        "id": ids, "text": texts, "source": [source] * m, "url": [None] * m, "domain": [None] * m, "lang": [None] * m,
        "crawl_date": [None] * m, "license": ["CC-BY-SA-4.0"] * m, "meta": [None] * m, "ingest_run": ["ing-test"] * m,
        "src_file": [f"/input/{source}.parquet"] * m, "src_offset": list(range(m)),
    }, schema=pl.Schema(DOCUMENT)).with_columns(
        pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias("n_tokens"))


def build_release(out: Path, corpora: Path, *, sources: dict[str, int] | None = None, seed: int = 0,
                  shard_rows: int = 150, repeat: int = 1) -> Path:
    sources = sources or SOURCES
    docs = {s: source_documents(corpora, s, n, repeat) for s, n in sources.items()}
    tokens = {s: int(d.get_column("n_tokens").sum()) for s, d in docs.items()}
    budget = 0.8 * sum(tokens.values())
    plan = end_phase_upsampling(unimax(tokens, budget, max_epochs=3), fraction=0.15, upsample={"wiki_en": 2.0})
    sp = plan_sampling(plan, tokens, max_epochs=3, seed=seed)
    picked, samples = [], []
    for s, d in docs.items():
        smp = sample_source(sp, s, d.get_column("id"), d.get_column("n_tokens"))
        samples.append(smp)
        picked.append(d[smp.get_column("row").to_numpy()].with_columns(smp.get_column("phase")))
    rows = pl.concat(picked)
    rows = rows.with_columns(pl.Series("compression_ratio", compression_ratios(rows.get_column("text").to_list()),
                                       dtype=pl.Float64))
    curriculum = CurriculumConfig(kind="folding", column="compression_ratio", folds=3)
    perm, _ = order_release(rows, curriculum, seed)
    ordered = rows[perm].select(RELEASE_SCHEMA.names)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    for k, start in enumerate(range(0, ordered.height, shard_rows)):
        part = ordered.slice(start, shard_rows).to_arrow().cast(RELEASE_SCHEMA)
        name = f"shard-{k:06d}.parquet"
        pq.write_table(part, out / name, row_group_size=10_000, compression="zstd")
        data = (out / name).read_bytes()
        shards.append({"file": name, "rows": part.num_rows, "tokens": int(pa.compute.sum(part.column("n_tokens")).as_py()),
                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    per_source = {s: {"rows_kept": int((ordered.get_column("source") == s).sum()),
                      "tokens_kept": int(ordered.filter(pl.col("source") == s).get_column("n_tokens").sum())}
                  for s in sources}
    manifest = {
        "name": "test-release", "version": f"2026-01-01-{seed:06d}", "parent": None, "seed": seed,
        "order": "curriculum", "selection": "true", "content_hash": hashlib.sha256(
            json.dumps([sources, seed, shard_rows, repeat]).encode()).hexdigest(),
        "tokenizer": "whitespace",
        "mixture": plan.to_dict(), "sampling": sp.to_dict(), "curriculum": curriculum.model_dump(),
        "phases": phase_boundaries(sp, samples),
        "totals": {"rows": ordered.height, "tokens": int(ordered.get_column("n_tokens").sum()),
                   "bytes": sum(s["bytes"] for s in shards)},
        "sources": per_source, "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def release_rows(release_dir: Path) -> pl.DataFrame:
    """All rows of a release in training order (the reference the exports are checked against)."""
    m = json.loads((release_dir / "manifest.json").read_text())
    return pl.concat([pl.read_parquet(release_dir / s["file"]) for s in m["shards"]])


def expected_ids(tokenizer_path: Path, texts: list[str], eos: str = "<|endoftext|>") -> list[list[int]]:
    """Token ids per text, encoded one by one (not batched), with the end-of-text id appended."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    e = tok.token_to_id(eos)
    return [tok.encode(t, add_special_tokens=False).ids + [e] for t in texts]


def phases_array(df: pl.DataFrame) -> np.ndarray:
    return df.get_column("phase").to_numpy() if "phase" in df.columns else np.zeros(df.height, dtype=np.int8)
