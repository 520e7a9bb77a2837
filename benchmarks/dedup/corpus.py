"""A dedup benchmark corpus made of real text, with planted near-duplicate families.

Source text: every document of ../shared/corpora (Wikipedia summaries in English, French and
Spanish, the Python docs, Project Gutenberg plays and poems), cut into sentences and kept in
order. A **base document** is a few runs of consecutive sentences (20-200 words each) taken
from random places of one corpus, up to a length drawn log-uniformly from 80-800 words; runs
become paragraphs. Each base document is a pure function of (seed, its index), so any chunk can
rebuild any earlier base document without keeping it.

A **variant** copies a base document (or, in a chain, a variant of it) and applies one or two
of: word edits at a rate from ``EDIT_RATES`` (substitution by a word of the same corpus,
deletion, insertion), a boilerplate header and/or footer (real Gutenberg licence text),
truncation (keep 55-97% of the words), paragraph reordering, or nothing (an exact copy). Most
variants land in the same chunk as their base, some in a later chunk.

Real duplicates already in the text (the same passage in two Gutenberg editions, repeated
Wikipedia summaries, the same boilerplate) are left as they are: ground truth comes from exact
Jaccard (benchmarks/dedup/truth.py), not from the plan.

Output: Parquet with ``doc_idx`` (int64, order of the corpus), ``text``, ``family`` (the index
of the base document it comes from; a base document carries its own) and ``op`` (what made it),
one row group per chunk of ``chunk_docs`` documents (shuffled inside the chunk).

    .venv/bin/python -m benchmarks.dedup.corpus --docs 200000 --out /tmp/dedup-bench/corpus-200k.parquet
"""
from __future__ import annotations

import argparse
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[3] / "shared" / "corpora"))
SOURCES = ("wiki_en", "wiki_fr", "wiki_es", "python_docs", "gutenberg")
EDIT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)
OPS = ("edit", "edit", "edit", "boilerplate", "truncate", "reorder", "copy", "edit+boilerplate", "truncate+edit")
SCHEMA = pa.schema([("doc_idx", pa.int64()), ("text", pa.large_string()), ("family", pa.int64()),
                    ("op", pa.string())])
_SENT = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n")


@dataclass
class Pool:
    sentences: list[list[str]]  # per corpus, in order
    lengths: list[np.ndarray]  # words per sentence
    vocab: list[list[str]]  # words per corpus, for substitutions
    weights: np.ndarray  # how often each corpus is drawn
    boilerplate: list[str]


def load_pool() -> Pool:
    sentences, lengths, vocab, words_total, boiler = [], [], [], [], []
    for name in SOURCES:
        texts = pq.read_table(CORPORA / f"{name}.parquet", columns=["text"]).column("text").to_pylist()
        sents = [s.strip() for t in texts for s in _SENT.split(t) if s and len(s.split()) >= 3]
        sentences.append(sents)
        lens = np.array([len(s.split()) for s in sents], dtype=np.int64)
        lengths.append(lens)
        words = sorted({w for s in sents[:20000] for w in s.split() if w.isalpha()})
        vocab.append(words)
        words_total.append(int(lens.sum()))
        if name == "gutenberg":
            for t in texts:
                w = t.split()
                if len(w) > 400:
                    boiler.append(" ".join(w[:60]))
                    boiler.append(" ".join(w[-90:]))
    weights = np.array(words_total, dtype=np.float64)
    return Pool(sentences, lengths, vocab, weights / weights.sum(), boiler)


def base_document(pool: Pool, seed: int, index: int) -> list[str]:
    """Paragraphs of base document ``index`` (deterministic in seed and index)."""
    rng = np.random.default_rng([seed, 1, index])
    c = int(rng.choice(len(pool.sentences), p=pool.weights))
    sents, lens = pool.sentences[c], pool.lengths[c]
    target = int(math.exp(rng.uniform(math.log(80), math.log(800))))
    paras: list[str] = []
    total = 0
    while total < target:
        start = int(rng.integers(0, len(sents)))
        run_target = min(int(rng.integers(20, 200)), target - total)
        run, got = [], 0
        i = start
        while got < run_target and i < len(sents):
            run.append(sents[i])
            got += int(lens[i])
            i += 1
        if not run:
            continue
        paras.append(" ".join(run))
        total += got
    words = " ".join(paras).split(" ")
    if len(words) > target + 40:  # trim an overlong last run at a word
        cut = " ".join(words[:target])
        paras = cut.split("\n\n") if "\n\n" in cut else [cut]
    return paras


def _edit(words: list[str], rate: float, vocab: list[str], rng: np.random.Generator) -> list[str]:
    out: list[str] = []
    u = rng.random(len(words))
    kind = rng.random(len(words))
    for w, x, k in zip(words, u, kind):
        if x >= rate:
            out.append(w)
        elif k < 0.4:
            out.append(vocab[int(rng.integers(len(vocab)))])
        elif k < 0.7:
            continue
        else:
            out.append(w)
            out.append(vocab[int(rng.integers(len(vocab)))])
    return out or words[:1]


def variant(pool: Pool, paras: list[str], corpus: int, rng: np.random.Generator) -> tuple[list[str], str]:
    op = OPS[int(rng.integers(len(OPS)))]
    for part in op.split("+"):
        if part == "edit":
            rate = EDIT_RATES[int(rng.integers(len(EDIT_RATES)))]
            paras = [" ".join(_edit(p.split(" "), rate, pool.vocab[corpus], rng)) for p in paras]
            op = op.replace("edit", f"edit{rate:g}")
        elif part == "boilerplate":
            b = pool.boilerplate
            if rng.random() < 0.7:
                paras = [b[int(rng.integers(len(b)))], *paras]
            if rng.random() < 0.6:
                paras = [*paras, b[int(rng.integers(len(b)))]]
        elif part == "truncate":
            words = " ".join(paras).split(" ")
            keep = max(5, int(len(words) * rng.uniform(0.55, 0.97)))
            paras = [" ".join(words[:keep])]
        elif part == "reorder" and len(paras) > 1:
            paras = [paras[i] for i in rng.permutation(len(paras))]
        elif part == "reorder":
            s = _SENT.split(paras[0])
            paras = [" ".join(s[i] for i in rng.permutation(len(s)))]
    return paras, op


def corpus_of(pool: Pool, seed: int, index: int) -> int:
    rng = np.random.default_rng([seed, 1, index])
    return int(rng.choice(len(pool.sentences), p=pool.weights))


def generate(out: Path, docs: int, seed: int = 7, chunk_docs: int = 50_000, family_share: float = 0.35,
             pool: Pool | None = None) -> dict:
    """Write ``docs`` documents to ``out`` (Parquet, one row group per chunk); returns stats."""
    pool = pool or load_pool()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    writer = pq.ParquetWriter(tmp, SCHEMA, compression="zstd")
    next_base = 0
    written = 0
    ops: dict[str, int] = {}
    t0 = time.perf_counter()
    for chunk in range((docs + chunk_docs - 1) // chunk_docs):
        rng = np.random.default_rng([seed, 2, chunk])
        n = min(chunk_docs, docs - written)
        texts, families, kinds = [], [], []
        chunk_first_base = next_base
        while len(texts) < n:
            b = next_base
            next_base += 1
            paras = base_document(pool, seed, b)
            texts.append("\n\n".join(paras))
            families.append(b)
            kinds.append("base")
            if rng.random() < family_share:
                k = min(1 + int(rng.geometric(0.45)), 12)
                prev = paras
                for _ in range(k):
                    src = prev if rng.random() < 0.3 else paras  # chains as well as stars
                    v, op = variant(pool, src, corpus_of(pool, seed, b), rng)
                    texts.append("\n\n".join(v))
                    families.append(b)
                    kinds.append(op)
                    prev = v
            # Some variants of a base document from an earlier chunk.
            if chunk_first_base > 0 and rng.random() < 0.04:
                old = int(rng.integers(0, chunk_first_base))
                v, op = variant(pool, base_document(pool, seed, old), corpus_of(pool, seed, old), rng)
                texts.append("\n\n".join(v))
                families.append(old)
                kinds.append(op + "/earlier-chunk")
        texts, families, kinds = texts[:n], families[:n], kinds[:n]
        order = rng.permutation(n)
        table = pa.table({
            "doc_idx": np.arange(written, written + n, dtype=np.int64),
            "text": pa.array([texts[i] for i in order], type=pa.large_string()),
            "family": np.asarray(families, dtype=np.int64)[order],
            "op": [kinds[i] for i in order],
        }, schema=SCHEMA)
        writer.write_table(table)
        for k in kinds:
            key = k.split("/")[0]
            ops[key] = ops.get(key, 0) + 1
        written += n
        print(f"  corpus chunk {chunk}: {written:,} documents ({time.perf_counter() - t0:.0f} s)", flush=True)
    writer.close()
    tmp.replace(out)
    return {"documents": written, "base_documents": next_base, "ops": ops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--chunk-docs", type=int, default=50_000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    print(generate(a.out, a.docs, a.seed, a.chunk_docs))


if __name__ == "__main__":
    main()
