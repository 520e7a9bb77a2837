"""Sampling plans: exact token targets, epoch caps, expected counts, determinism."""
from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from planning.mixture import MixturePlan, end_phase_upsampling
from planning.sampling import id_keys, phase_boundaries, plan_sampling, sample_source


def _ids(source: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{source}:{i}".encode()).hexdigest()[:32] for i in range(n)]


def _source(source: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    return _ids(source, n), np.random.default_rng(seed).integers(50, 500, n)


@pytest.fixture()
def corpus() -> dict[str, tuple[list[str], np.ndarray]]:
    return {"web": _source("web", 3000, 1), "code": _source("code", 800, 2), "math": _source("math", 200, 3)}


def _tokens(corpus) -> dict[str, int]:
    return {s: int(t.sum()) for s, (_, t) in corpus.items()}


def test_counts_hit_targets_and_caps(corpus) -> None:
    tokens = _tokens(corpus)
    budget = 0.9 * sum(tokens.values())
    plan = MixturePlan("fixed", {"web": 0.5, "code": 0.3, "math": 0.2}, tokens, budget)
    sp = plan_sampling(plan, max_epochs={"math": 2.0}, seed=11)
    assert sp.quotas["math"].capped and sp.quotas["math"].target == pytest.approx(2 * tokens["math"])
    assert sp.quotas["math"].shortfall == pytest.approx(0.2 * budget - 2 * tokens["math"])
    for s, (ids, nt) in corpus.items():
        out = sample_source(sp, s, ids, nt)
        target = sp.quotas[s].target
        got = int(out.get_column("n_tokens").sum())
        assert abs(got - target) <= nt.max() / 2  # midpoint rule: within half a document
        counts = np.bincount(out.get_column("row").to_numpy(), minlength=len(ids))
        e = target / nt.sum()
        assert set(np.unique(counts)) <= {int(np.floor(e)), int(np.floor(e)) + 1}  # balanced repeats
        assert counts.max() <= (2 if s == "math" else np.ceil(e))
        # copies are numbered 0..count-1 per document
        per = out.group_by("row").agg(pl.col("copy").max() + 1, pl.len())
        assert (per.get_column("copy") == per.get_column("len")).all()


def test_expected_counts_are_unbiased(corpus) -> None:
    """Over many seeds the number of extra copies a document gets averages to E - floor(E)."""
    ids, nt = corpus["code"]
    nt = np.full(len(ids), 100)
    tokens = {"code": int(nt.sum())}
    plan = MixturePlan("fixed", {"code": 1.0}, tokens, 1.3 * tokens["code"])
    total = np.zeros(len(ids))
    seeds = 200
    for seed in range(seeds):
        out = sample_source(plan_sampling(plan, seed=seed), "code", ids, nt)
        total += np.bincount(out.get_column("row").to_numpy(), minlength=len(ids))
        assert out.height == 1040  # 1.3 * 800 documents of equal size, exactly
    mean = total / seeds
    assert mean.mean() == pytest.approx(1.3)
    assert np.abs(mean - 1.3).max() < 0.2  # each document's own frequency (200 draws of p = 0.3)


def test_deterministic_and_seed_sensitive(corpus) -> None:
    tokens = _tokens(corpus)
    base = MixturePlan("fixed", {"web": 0.6, "code": 0.3, "math": 0.1}, tokens, sum(tokens.values()))
    plan = end_phase_upsampling(base, fraction=0.15, upsample={"math": 3})
    a = plan_sampling(plan, max_epochs=4, seed=5)
    b = plan_sampling(plan, max_epochs=4, seed=5)
    assert a.to_json() == b.to_json()
    for s, (ids, nt) in corpus.items():
        x, y = sample_source(a, s, ids, nt), sample_source(b, s, ids, nt)
        assert x.to_arrow().equals(y.to_arrow())
        # the choice depends on ids, not on the input order
        perm = np.random.default_rng(0).permutation(len(ids))
        z = sample_source(a, s, [ids[i] for i in perm], nt[perm])
        chosen = sorted(zip(np.array(ids)[x["row"].to_numpy()], x["phase"].to_list()))
        chosen_perm = sorted(zip(np.array(ids)[perm][z["row"].to_numpy()], z["phase"].to_list()))
        assert [c[0] for c in chosen] == [c[0] for c in chosen_perm]
    c = plan_sampling(plan, max_epochs=4, seed=6)
    web_ids, web_nt = corpus["web"]
    assert not sample_source(c, "web", web_ids, web_nt).equals(sample_source(a, "web", web_ids, web_nt))


def test_phases_get_their_token_targets(corpus) -> None:
    tokens = _tokens(corpus)
    base = MixturePlan("fixed", {"web": 0.6, "code": 0.3, "math": 0.1}, tokens, 0.8 * sum(tokens.values()))
    plan = end_phase_upsampling(base, fraction=0.2, upsample={"math": 3})
    sp = plan_sampling(plan, seed=1)
    samples = []
    for s, (ids, nt) in corpus.items():
        out = sample_source(sp, s, ids, nt)
        samples.append(out)
        per_phase = out.group_by("phase").agg(pl.col("n_tokens").sum()).sort("phase").get_column("n_tokens").to_list()
        for got, want in zip(per_phase, sp.quotas[s].phase_targets):
            assert abs(got - want) <= nt.max()
    bounds = phase_boundaries(sp, samples)
    assert [b["phase"] for b in bounds] == ["main", "anneal"]
    assert bounds[0]["start_row"] == 0 and bounds[0]["end_row"] == bounds[1]["start_row"]
    assert bounds[1]["end_row"] == sum(x.height for x in samples)
    assert bounds[1]["end_token"] - bounds[1]["start_token"] == pytest.approx(0.2 * plan.budget, rel=0.01)


def test_id_keys_hex_fast_path_and_fallback() -> None:
    ids = ["0123456789abcdef0123456789abcdef", "not-a-hex-id", "FFFFFFFFFFFFFFFF0000"]
    k = id_keys(ids)
    assert k[0] == np.uint64(0x0123456789ABCDEF) and k[2] == np.uint64(0xFFFFFFFFFFFFFFFF)
    assert k[1] == np.uint64(int.from_bytes(hashlib.blake2b(b"not-a-hex-id", digest_size=8).digest(), "little"))


def test_errors() -> None:
    plan = MixturePlan("fixed", {"a": 1.0}, {"a": 100}, 100)
    with pytest.raises(ValueError, match="no token counts"):
        plan_sampling(MixturePlan("fixed", {"b": 1.0}, {"b": 1}, 1), {"a": 100})
    with pytest.raises(KeyError):
        sample_source(plan_sampling(plan), "zzz", [], [])
    assert sample_source(plan_sampling(plan), "a", [], []).height == 0
