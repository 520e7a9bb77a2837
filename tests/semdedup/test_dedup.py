"""semantic_dedup on vectors whose truth is known: every pair above the threshold found by brute
force (blocked products, no clustering), survivor policies, D4, determinism, bad input."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from engines.stage import StageContext
from filters.semdedup import core
from filters.semdedup.stage import SemanticDedup


def blobs(n=4000, d=32, centers=40, dups=400, seed=0, spread=0.35, noise=0.08):
    """Unit vectors around random centres (topics), with ``dups`` planted near copies."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, d))
    a = rng.choice(n, dups, replace=False)
    b = rng.choice(np.setdiff1d(np.arange(n), a), dups, replace=False)
    x[b] = x[a] + noise * rng.standard_normal((dups, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def batches(x, valid=None, sources=None, scores=None, rows=700, dtype=None):
    n, d = x.shape
    valid = np.ones(n, bool) if valid is None else valid
    for s in range(0, n, rows):
        e = min(n, s + rows)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[s:e].ravel()).cast(dtype or pa.float16()), d,
                                                mask=pa.array(~valid[s:e]))
        cols = {"id": [f"d{i}" for i in range(s, e)],
                "source": sources[s:e] if sources is not None else ["a"] * (e - s),
                "ingest_run": ["r"] * (e - s), "src_file": ["f"] * (e - s), "src_offset": list(range(s, e)),
                "embedding": pl.Series(emb)}
        if scores is not None:
            cols["score"] = scores[s:e]
        yield pl.DataFrame(cols)


def fit_apply(tmp_path, x, params, **kw):
    stage = SemanticDedup(params)
    art = tmp_path / f"art{len(list(tmp_path.iterdir()))}"
    art.mkdir()
    metrics = stage.fit(batches(x, **kw), str(art))
    stage.setup(StageContext(artifact_dir=str(art)))
    out = pl.concat([stage.transform(b.drop("embedding")) for b in batches(x, **kw)])
    return stage, art, metrics, out


def stored(x):
    """The vectors as the stage sees them (float16, as the embed stage stores them)."""
    return np.asarray(pa.array(x.ravel()).cast(pa.float16()).to_numpy(zero_copy_only=False)).reshape(x.shape)


def test_pairs_match_brute_force(tmp_path):
    x = blobs()
    truth = core.brute_force_pairs(stored(x), np.ones(len(x), bool), 0.9)
    want = set(zip(truth["a"].tolist(), truth["b"].tolist()))
    assert len(want) >= 400  # the planted pairs and more
    recalls = []
    for n_probe in (1, 3):
        _, art, m, out = fit_apply(tmp_path, x, {"eps": 0.1, "n_clusters": 40, "n_probe": n_probe, "record_pairs": True})
        got = pl.read_parquet(art / "pairs.parquet")
        pairs = set(zip(got.get_column("pos_a").to_list(), got.get_column("pos_b").to_list()))
        assert pairs <= want  # precision 1.0: every accepted pair is above the threshold
        recalls.append(len(pairs & want) / len(want))
        assert (got.get_column("sim") >= 0.9).all()
    assert recalls[0] < 1.0 and recalls[1] >= 0.99 and recalls[1] > recalls[0]  # probing recovers split pairs


def test_groups_survivors_and_annotations(tmp_path):
    x = blobs(n=1500, dups=150)
    stage, art, m, out = fit_apply(tmp_path, x, {"eps": 0.1, "n_clusters": 10})
    truth = core.brute_force_pairs(stored(x), np.ones(len(x), bool), 0.9)
    # connected components of the brute-force pairs, computed here with a plain union-find
    parent = list(range(len(x)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for a, b in zip(truth["a"].tolist(), truth["b"].tolist()):
        parent[find(a)] = find(b)
    comp = np.array([find(i) for i in range(len(x))])
    sizes = np.bincount(comp, minlength=len(x))[comp]
    assert (out.get_column("sem_group_size").to_numpy() == sizes).all()
    assert out.filter(~pl.col("keep")).height == int((sizes > 1).sum() - len(np.unique(comp[sizes > 1])))
    assert (out.filter(~pl.col("keep")).get_column("reason") == "semantic_duplicate").all()
    # farthest: each group's survivor is its member least similar to its own centroid
    g = out.with_columns(pl.Series("id", [f"d{i}" for i in range(len(x))])).filter(pl.col("sem_group_size") > 1)
    worst = g.group_by("sem_group").agg(pl.col("id").sort_by("centroid_sim").first().alias("far"),
                                         pl.col("survivor_id").first())
    assert (worst.get_column("far") == worst.get_column("survivor_id")).all()
    # nearest: a duplicate's nearest neighbour is at least as similar as the threshold
    dup = out.filter(pl.col("sem_group_size") > 1)
    assert (dup.get_column("nearest_sim") >= 0.9 - 1e-3).all() and dup.get_column("nearest_id").null_count() == 0
    assert m["groups"] == len(np.unique(comp[sizes > 1])) and m["clusters"] == 10
    assert pl.read_parquet(art / "catalog/semantic_groups.parquet").height == m["groups"]


@pytest.mark.parametrize("policy", ["first", "quality", "source_priority"])
def test_survivor_policies(tmp_path, policy):
    x = blobs(n=1200, dups=150, seed=3)
    sources = ["web" if i % 3 else "books" for i in range(len(x))]
    scores = np.random.default_rng(1).random(len(x))
    params = {"eps": 0.1, "n_clusters": 8, "survivor": policy, "source_priority": ["books"]}
    _, _, _, out = fit_apply(tmp_path, x, params, sources=sources, scores=scores)
    g = (out.with_columns(pl.Series("pos", np.arange(len(x))), pl.Series("score", scores),
                          pl.Series("src", sources)).filter(pl.col("sem_group_size") > 1))
    surv = g.filter(pl.col("keep"))
    assert surv.height == g.get_column("sem_group").n_unique()  # exactly one survivor per group
    best = g.group_by("sem_group").agg(pl.col("pos").min().alias("first"), pl.col("score").max().alias("best"),
                                       (pl.col("src") == "books").any().alias("has_books"))
    j = surv.join(best, on="sem_group")
    if policy == "first":
        assert (j.get_column("pos") == j.get_column("first")).all()
    elif policy == "quality":
        assert (j.get_column("score") == j.get_column("best")).all()
    else:
        assert ((j.get_column("src") == "books") | ~j.get_column("has_books")).all()


def test_d4_prunes_the_most_prototypical(tmp_path):
    x = blobs(n=2000, dups=100, seed=5)
    _, _, m, out = fit_apply(tmp_path, x, {"eps": 0.1, "n_clusters": 12, "d4_fraction": 0.6})
    kept = out.filter(pl.col("keep"))
    for _, part in kept.group_by("cluster"):
        n_keep = part.get_column("d4_keep").sum()
        assert n_keep == math.ceil(0.6 * part.height)
        if n_keep < part.height:  # every pruned one is closer to the centroid than every kept one
            assert (part.filter(~pl.col("d4_keep")).get_column("centroid_sim").min()
                    >= part.filter(pl.col("d4_keep")).get_column("centroid_sim").max())
    assert not out.filter(~pl.col("keep")).get_column("d4_keep").any()
    assert m["d4_pruned"] == int((out.get_column("keep") & ~out.get_column("d4_keep")).sum())


def test_deterministic_and_nulls_kept(tmp_path):
    x = blobs(n=1500, dups=100, seed=7)
    valid = np.ones(len(x), bool)
    valid[::50] = False
    runs = [fit_apply(tmp_path, x, {"eps": 0.1, "seed": 3}, valid=valid)[3] for _ in range(2)]
    assert runs[0].equals(runs[1])
    nulls = runs[0].filter(pl.Series(~valid))
    assert nulls.get_column("keep").all() and nulls.get_column("cluster").null_count() == nulls.height
    assert runs[0].filter(pl.Series(valid)).get_column("cluster").null_count() == 0


def test_float32_embeddings_and_tiny_corpora(tmp_path):
    x = blobs(n=30, dups=5, d=8)
    _, _, m, out = fit_apply(tmp_path, x, {"eps": 0.05}, dtype=pa.float32())
    assert out.height == 30 and m["clusters"] == 1
    _, _, m0, out0 = fit_apply(tmp_path, x, {}, valid=np.zeros(len(x), bool))  # nothing embedded
    assert out0.get_column("keep").all() and out0.get_column("cluster").null_count() == 30 and m0["embedded"] == 0
    one = blobs(n=1, dups=0, d=8)
    _, _, m1, out1 = fit_apply(tmp_path, one, {})
    assert out1.get_column("keep").to_list() == [True] and m1["groups"] == 0


def test_bad_embedding_column_is_a_clear_error(tmp_path):
    stage = SemanticDedup({})
    bad = pl.DataFrame({"id": ["a"], "source": ["s"], "ingest_run": ["r"], "src_file": ["f"], "src_offset": [0],
                        "embedding": ["not a vector"]})
    with pytest.raises(ValueError, match="fixed-size list of floats"):
        stage.fit(iter([bad]), str(tmp_path))
    x = blobs(n=20, dups=2, d=8)
    y = blobs(n=20, dups=2, d=16)
    mixed = [next(batches(x)), next(batches(y))]
    with pytest.raises(ValueError, match="dimensions"):
        SemanticDedup({}).fit(iter(mixed), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="missing"):
        SemanticDedup({"survivor": "quality"}).fit(batches(x), str(tmp_path / "c"))


def test_components_and_buckets_against_plain_python(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    edges = rng.integers(0, n, (2500, 2))
    spill = core._EdgeSpill(str(tmp_path / "e.bin"))
    spill.add(edges[:, 0], edges[:, 1])
    spill.close()
    labels = core.components(n, spill, str(tmp_path))
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    assert [find(i) for i in range(n)] == np.asarray(labels).tolist()  # label = smallest member
    lab = rng.integers(-1, 7, (n, 2)).astype(np.int32)
    out, off = core.bucket_positions(lab, 7, str(tmp_path / "b.npy"))
    for c in range(7):
        want = sorted(i for i in range(n) for j in range(2) if lab[i, j] == c)
        assert np.asarray(out[off[c]:off[c + 1]]).tolist() == want
