"""Ground truth for the dedup benchmark: exact Jaccard of shingle sets, and the clusters it implies.

Shingles follow the documented normalisation of ``minhash_signatures`` (lower-case, punctuation
and symbols as word breaks, word 5-grams; tests/minhash checks the kernel against a plain-Python
implementation of it); each shingle is identified by its 64-bit hash.

Pairs whose exact Jaccard is computed (a superset of every pair at or above the threshold):

1. every pair inside a planted family (the base document and all its variants);
2. every pair sharing a bucket of an independent, deliberately loose LSH: 128 other
   permutations (another seed), 32 bands x 4 rows. A pair at Jaccard 0.7 escapes it with
   probability (1 - 0.7^4)^32 = 1.5e-4, at 0.8 with 5e-8; that catches the real duplicates
   already in the text and accidental ones (shared boilerplate) that no plan knows of.

Exact Jaccard is computed per pair with ``numpy.intersect1d`` on the sorted unique hash sets, and
clusters are the connected components (``scipy.sparse.csgraph``) of the pairs at or above the
threshold; ``score`` compares a tool's removals with them, whichever member a tool keeps.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from filters.minhash import kernels as k
from filters.minhash.signatures import MinHashParams, SignatureComputer


def shingle_sets(texts: pl.Series, ngram: int = 5) -> list[np.ndarray]:
    comp = SignatureComputer(MinHashParams(ngram=ngram))
    out: list[np.ndarray] = []
    for s in range(0, len(texts), 20_000):
        out.extend(np.unique(h) for h in comp.shingle_hashes(texts.slice(s, 20_000)))
    return out


def candidate_pairs(texts: pl.Series, families: np.ndarray, ngram: int = 5) -> np.ndarray:
    """Unique (lo, hi) pairs (uint64 code lo << 32 | hi) from families and the loose LSH."""
    codes = []
    order = np.argsort(families, kind="stable")
    fam_sorted = families[order]
    starts = np.flatnonzero(np.r_[True, fam_sorted[1:] != fam_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
        if e - s > 1:
            members = np.sort(order[s:e])
            i, j = np.triu_indices(len(members), 1)
            codes.append((members[i].astype(np.uint64) << np.uint64(32)) | members[j].astype(np.uint64))
    params = MinHashParams(ngram=ngram, num_perm=128, bands=32, rows=4, seed=987654321)
    comp = SignatureComputer(params)
    keys, pos = [], []
    for s in range(0, len(texts), 20_000):
        band_keys, counts, _, _ = comp.compute(texts.slice(s, 20_000))
        ok = counts > 0
        rows = np.flatnonzero(ok)
        keys.append(band_keys[ok].reshape(-1))
        pos.append(np.repeat(rows + s, band_keys.shape[1]))
    f = pl.DataFrame({"key": np.concatenate(keys), "pos": np.concatenate(pos).astype(np.int64)})
    f = f.filter(pl.col("key").is_duplicated()).sort("key", "pos")
    lo, hi = k.bucket_pairs_kernel(f.get_column("key").to_numpy(), f.get_column("pos").to_numpy(), 10_000)
    codes.append((lo.astype(np.uint64) << np.uint64(32)) | hi.astype(np.uint64))
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.uint64)


def exact_jaccard(sets: list[np.ndarray], codes: np.ndarray) -> np.ndarray:
    lo = (codes >> np.uint64(32)).astype(np.int64)
    hi = (codes & np.uint64(0xFFFFFFFF)).astype(np.int64)
    out = np.empty(len(codes))
    for i, (a, b) in enumerate(zip(lo, hi)):
        sa, sb = sets[a], sets[b]
        inter = len(np.intersect1d(sa, sb, assume_unique=True))
        union = len(sa) + len(sb) - inter
        out[i] = inter / union if union else 0.0
    return out


def compute_truth(corpus: Path, out: Path, threshold: float, ngram: int = 5) -> dict:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t0 = time.perf_counter()
    df = pl.read_parquet(corpus, columns=["doc_idx", "text", "family"])
    texts = df.get_column("text")
    n = df.height
    sets = shingle_sets(texts, ngram)
    codes = candidate_pairs(texts, df.get_column("family").to_numpy(), ngram)
    sims = exact_jaccard(sets, codes)
    del sets
    keep = sims >= threshold
    lo = (codes[keep] >> np.uint64(32)).astype(np.int64)
    hi = (codes[keep] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    graph = coo_matrix((np.ones(len(lo), dtype=np.int8), (lo, hi)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    frame = pl.DataFrame({"doc_idx": np.arange(n), "label": labels})
    frame = frame.with_columns(pl.col("doc_idx").min().over("label").alias("cluster"),
                               pl.len().over("label").alias("cluster_size")).drop("label")
    frame = frame.with_columns(((pl.col("cluster_size") > 1) & (pl.col("doc_idx") != pl.col("cluster"))).alias("is_dup"))
    frame.write_parquet(out)
    hist = np.histogram(sims, bins=10, range=(0, 1))[0].tolist()
    stats = {"documents": n, "pairs_checked": int(len(codes)), "pairs_at_or_above": int(keep.sum()),
             "clusters": int(frame.filter(pl.col("cluster_size") > 1).get_column("cluster").n_unique()),
             "true_duplicates": int(frame.get_column("is_dup").sum()), "jaccard_histogram_of_checked_pairs": hist,
             "seconds": round(time.perf_counter() - t0, 1)}
    return stats


def score(truth: pl.DataFrame, removed: np.ndarray) -> dict:
    """Precision/recall of a removed set against the true clusters, whatever member a tool keeps.

    In a true cluster C (a component of the exact-Jaccard graph; a lone document is a cluster of
    one) the right number of removals is |C| - 1, so the correct removals are
    min(removed in C, |C| - 1): removing a document that has no partner at or above the
    threshold, or the last copy of a cluster, is a false positive. precision = correct / removed,
    recall = correct / sum(|C| - 1); leftover = true clusters with two or more documents kept."""
    n = truth.height
    rem = np.zeros(n, dtype=bool)
    rem[removed] = True
    per = (truth.select("cluster", "cluster_size").with_columns(pl.Series("removed", rem))
           .group_by("cluster").agg(pl.col("cluster_size").first(), pl.col("removed").sum().alias("r")))
    correct = int(per.select(pl.min_horizontal(pl.col("r"), pl.col("cluster_size") - 1).sum()).item())
    should = int(per.select((pl.col("cluster_size") - 1).sum()).item())
    leftover = int(per.filter(pl.col("cluster_size") - pl.col("r") >= 2).height)
    return {"removed": int(rem.sum()), "precision": correct / max(1, int(rem.sum())), "recall": correct / max(1, should),
            "leftover_clusters": leftover}
