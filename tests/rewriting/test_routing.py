"""Routing parents to methods: the `when` expression over annotations, the seeded sample rate and
the token budget, checked against a plain-Python reading of the same rules."""
from __future__ import annotations

import hashlib
import random

import polars as pl
import pytest

from rewriting.methods import AnyRoute  # noqa: F401  (the route models)
from rewriting.params import RewriteParams
from rewriting.plan import in_sample, route_shard
from warehouse.selection import parse_selection


def _frame(n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    return pl.DataFrame({
        "id": [f"doc-{seed}-{i}" for i in range(n)],
        "text": [" ".join(["w"] * rng.randint(0, 40)) for _ in range(n)],
        "source": [rng.choice(["web", "wiki"]) for _ in range(n)],
        "gopher.keep": [rng.choice([True, False, None]) for _ in range(n)],
        "ensemble.bucket": [rng.choice([None, *range(10)]) for _ in range(n)],
    })


def _expected(frame: pl.DataFrame, pred, rate: float, seed: int, budget: int | None, spent: int) -> list[int]:
    taken, total = [], 0
    for i, row in enumerate(frame.iter_rows(named=True)):
        words = len(row["text"].split())
        h = int(hashlib.sha256(f"{seed}\x1f{row['id']}".encode()).hexdigest()[:8], 16) / 2**32
        if not pred(row) or words == 0 or not (rate >= 1 or h < rate):
            continue
        if budget is not None and spent + total + words > budget:
            break  # the first parent that would overrun ends the route's intake
        taken.append(i)
        total += words
    return taken


ROUTES = [
    ("ensemble.bucket >= 8", lambda r: r["ensemble.bucket"] is not None and r["ensemble.bucket"] >= 8),
    ("not gopher.keep", lambda r: r["gopher.keep"] is False),
    ("source == 'wiki' and gopher.keep", lambda r: r["source"] == "wiki" and r["gopher.keep"] is True),
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("when, pred", ROUTES)
def test_routes_match_plain_python(seed, when, pred):
    frame = _frame(300, seed)
    rng = random.Random(seed)
    rate = rng.choice([1.0, 0.5, 0.2])
    budget = rng.choice([None, 200, 1500])
    spent0 = rng.choice([0, 100])
    params = RewriteParams.model_validate({"routes": [{"method": "wrap", "when": when, "sample_rate": rate,
                                                       "budget_tokens": budget, "seed": seed}]})
    cols = {"gopher": {"keep"}, "ensemble": {"bucket"}}
    exprs = {"wrap": parse_selection(when, cols).expr}
    spent = {"wrap": spent0}
    routed, _ = route_shard(frame, params.routes, exprs, spent)
    want = _expected(frame, pred, rate, seed, budget, spent0)
    assert routed["wrap"].rows == want
    words = sum(len(frame["text"][i].split()) for i in want)
    assert routed["wrap"].tokens == words and spent["wrap"] == spent0 + words
    if budget is not None:
        assert spent["wrap"] <= max(budget, spent0)


def test_sample_is_stable_and_near_its_rate():
    ids = pl.Series([f"id{i}" for i in range(20000)])
    a, b = in_sample(ids, 0.1, 7), in_sample(ids, 0.1, 7)
    assert a.to_list() == b.to_list()
    assert 0.09 < a.mean() < 0.11
    assert in_sample(ids, 0.1, 8).to_list() != a.to_list()  # another seed, other parents
