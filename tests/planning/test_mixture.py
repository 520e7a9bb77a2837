"""Mixture planners against published fixtures and planted oracles with known optima."""
from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from planning.mixture import (
    MixtureConfig,
    MixturePlan,
    critical_mixture_ratio,
    end_phase_upsampling,
    fit_mixing_law,
    mixing_law,
    plan_mixture,
    regmix,
    regmix_candidates,
    temperature,
    unimax,
)

# The worked example in the README of the `unimax-sampling` package (PyPI, kgnlp/unimax):
# FineWeb-2 character counts, a 250B budget, at most 4 epochs.
UNIMAX_COUNTS = {"swe": 179955884499, "fas": 184595788282, "ekk": 42541080893, "isl": 10027573389, "fao": 549707867}
UNIMAX_BUDGETS = {"fao": 2198831468, "isl": 40110293556, "ekk": 69230291658.66667, "swe": 69230291658.66666,
                  "fas": 69230291658.66666}
UNIMAX_EPOCHS = {"fao": 4.0, "isl": 4.0, "ekk": 1.627375003300828, "swe": 0.3847070177860806, "fas": 0.37503722215431134}
UNIMAX_PROBS = {"fao": 0.008795325872, "isl": 0.160441174224, "ekk": 0.2769211666346667, "swe": 0.27692116663466665,
                "fas": 0.27692116663466665}


def test_unimax_published_example() -> None:
    plan = unimax(UNIMAX_COUNTS, 250_000_000_000, max_epochs=4)
    for s in UNIMAX_COUNTS:
        assert plan.diagnostics["budgets"][s] == pytest.approx(UNIMAX_BUDGETS[s], rel=1e-12)
        assert plan.epochs[s] == pytest.approx(UNIMAX_EPOCHS[s], rel=1e-12)
        assert plan.weights[s] == pytest.approx(UNIMAX_PROBS[s], rel=1e-9)
    assert sorted(plan.diagnostics["capped_sources"]) == ["fao", "isl"]


def test_unimax_budget_beyond_caps_is_reported() -> None:
    plan = unimax({"a": 10, "b": 30}, budget=1000, max_epochs=2)
    assert plan.budget == 80 and plan.diagnostics["unallocated"] == 920
    assert plan.weights == {"a": 0.25, "b": 0.75} and plan.epochs == {"a": 2.0, "b": 2.0}


def test_temperature_limits() -> None:
    n = {"a": 800.0, "b": 150.0, "c": 50.0}
    assert temperature(n, 1.0).weights == pytest.approx({"a": 0.8, "b": 0.15, "c": 0.05})
    hot = temperature(n, 1e9).weights
    assert all(v == pytest.approx(1 / 3, abs=1e-6) for v in hot.values())
    p2 = temperature(n, 2.0).weights  # weights proportional to sqrt of the shares
    z = sum(math.sqrt(v / 1000) for v in n.values())
    assert p2["c"] == pytest.approx(math.sqrt(0.05) / z)


def _planted_mixing_law() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three validation losses, loss_i = c_i + k_i * exp(-a_i * r_i): the optimum of their sum
    over the simplex is r_i = (ln(a_i k_i) - ln lambda) / a_i with ln lambda fixed by sum r = 1."""
    a, k, c = np.array([4.0, 6.0, 3.0]), np.array([1.0, 0.8, 1.5]), np.array([1.0, 1.2, 0.9])
    ln_lam = ((np.log(a * k) / a).sum() - 1) / (1 / a).sum()
    return a, k, c, (np.log(a * k) - ln_lam) / a


def test_mixing_law_recovers_closed_form_optimum() -> None:
    a, k, c, r_star = _planted_mixing_law()
    assert (r_star > 0).all() and r_star.sum() == pytest.approx(1)
    w = np.random.default_rng(0).dirichlet([1, 1, 1], 40)
    losses = c + k * np.exp(-a * w)
    runs = pl.DataFrame({"x": w[:, 0], "y": w[:, 1], "z": w[:, 2],
                         "l0": losses[:, 0], "l1": losses[:, 1], "l2": losses[:, 2]})
    plan = mixing_law(runs, ["l0", "l1", "l2"], {"x": 1e9, "y": 1e9, "z": 1e9})
    assert np.array(list(plan.weights.values())) == pytest.approx(r_star, abs=1e-5)
    fit = plan.diagnostics["fits"]["l0"]
    assert fit["c"] == pytest.approx(1.0, abs=1e-6) and fit["k"] == pytest.approx(1.0, abs=1e-6)
    assert fit["t"] == pytest.approx([-4.0, 0.0], abs=1e-6) and fit["r2"] > 0.999999


def test_mixing_law_fit_with_cross_terms_and_epoch_caps() -> None:
    rng = np.random.default_rng(3)
    w = rng.dirichlet([2, 2, 2, 2], 60)
    t = np.array([-3.0, 1.0, 0.5])  # relative to the last source
    loss = 2.0 + 0.7 * np.exp(w[:, :-1] @ t)
    fit = fit_mixing_law(w, loss)
    assert fit.c == pytest.approx(2.0, abs=1e-6) and fit.k == pytest.approx(0.7, abs=1e-6)
    assert fit.t == pytest.approx(t, abs=1e-6)
    # the unconstrained optimum puts everything on source 0; a cap of 1 epoch on 30% of the budget binds
    runs = pl.DataFrame({f"s{j}": w[:, j] for j in range(4)}).with_columns(pl.Series("loss", loss))
    plan = mixing_law(runs, ["loss"], {"s0": 300, "s1": 1000, "s2": 1000, "s3": 1000}, budget=1000, max_epochs=1)
    assert plan.weights["s0"] == pytest.approx(0.3, abs=1e-6) and plan.epochs["s0"] <= 1 + 1e-6
    # the rest goes where t is lowest after s0: s3 (t = 0) beats s2 (0.5) and s1 (1.0)
    assert plan.weights["s3"] == pytest.approx(0.7, abs=1e-4)


def test_regmix_recovers_planted_best_mixture() -> None:
    tokens = {"a": 4e9, "b": 3e9, "c": 2e9, "d": 1e9}
    w_star = np.array([0.25, 0.35, 0.15, 0.25])
    scale = np.array([3.0, 2.0, 4.0, 1.0])

    def loss(w: np.ndarray) -> np.ndarray:
        return 2.0 + ((w - w_star) ** 2 * scale).sum(axis=1)

    runs = regmix_candidates(tokens, 256, seed=7)
    results = runs.with_columns(pl.Series("val_loss", loss(runs.to_numpy())))
    plan = regmix(results, "val_loss", tokens, n_simulations=20_000, top_k=100, seed=0)
    got = np.array([plan.weights[s] for s in tokens])
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    assert np.abs(got - w_star).sum() < 0.2
    assert loss(got[None])[0] < results.get_column("val_loss").min()  # better than every proxy run
    assert loss(got[None])[0] - 2 < 0.25 * (loss(prior[None])[0] - 2)
    assert plan.diagnostics["train_spearman"] > 0.9
    again = regmix(results, "val_loss", tokens, n_simulations=20_000, top_k=100, seed=0)
    assert again.to_json() == plan.to_json()


def test_regmix_candidates_respect_caps_and_seed() -> None:
    tokens = {"big": 900.0, "small": 100.0}
    c = regmix_candidates(tokens, 500, seed=1, budget=1000, max_epochs=2)
    assert c.height == 500 and (c.get_column("small") <= 0.2 + 1e-12).all()
    assert np.allclose(c.sum_horizontal().to_numpy(), 1)
    assert c.equals(regmix_candidates(tokens, 500, seed=1, budget=1000, max_epochs=2))
    assert not c.equals(regmix_candidates(tokens, 500, seed=2, budget=1000, max_epochs=2))


def _planted_cmr_runs() -> pl.DataFrame:
    """General loss 2 + 0.8 r (T/1e9)^0.5 and domain loss 1.5 + 2/(1+r) (T/1e8)^-0.25."""
    rows = []
    for r in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        for t in (2.5e8, 5e8, 1e9, 2e9):
            rows.append({"ratio": r, "tokens": t, "general_loss": 2.0 + 0.8 * r * (t / 1e9) ** 0.5,
                         "domain_loss": 1.5 + 2.0 / (1 + r) * (t / 1e8) ** -0.25})
    return pl.DataFrame(rows)


def test_cmr_on_planted_power_laws() -> None:
    # at 4B tokens the general loss is 2 + 1.6 r; within 10% of 2.0 means r <= 0.2 / 1.6 = 0.125
    plan = critical_mixture_ratio(_planted_cmr_runs(), budget=4e9, domain_source="finance", general_source="web",
                                  tolerance=0.10, tokens={"finance": 2e9, "web": 1e11})
    assert plan.weights["finance"] == pytest.approx(0.125, abs=1e-6)
    assert plan.weights["web"] == pytest.approx(0.875, abs=1e-6)
    d = plan.diagnostics
    assert d["reference_general_loss"] == pytest.approx(2.0, abs=1e-6)
    assert d["predicted_general_loss"] == pytest.approx(2.2, abs=1e-6)
    assert d["predicted_domain_loss"] == pytest.approx(np.interp(0.125, [0.1, 0.2], [1.5 + 2 / 1.1 * 40 ** -0.25,
                                                                                  1.5 + 2 / 1.2 * 40 ** -0.25]), abs=1e-5)
    assert plan.epochs["finance"] == pytest.approx(0.125 * 4e9 / 2e9)
    # absolute tolerance: 2 + 1.6 r <= 2.08 -> r = 0.05
    p2 = critical_mixture_ratio(_planted_cmr_runs(), budget=4e9, domain_source="finance", general_source="web",
                                tolerance=0.08, relative=False)
    assert p2.weights["finance"] == pytest.approx(0.05, abs=1e-6)


def test_end_phase_upsampling() -> None:
    base = MixturePlan("fixed", {"web": 0.7, "code": 0.2, "math": 0.1}, {"web": 7e9, "code": 2e9, "math": 1e8}, 1e9)
    plan = end_phase_upsampling(base, fraction=0.2, upsample={"math": 4.0})
    main, anneal = plan.phases
    assert (main.start, main.end, anneal.start, anneal.end) == (0.0, 0.8, 0.8, 1.0)
    assert main.weights == base.weights
    assert anneal.weights["math"] == pytest.approx(0.4 / 1.3)
    assert plan.weights["math"] == pytest.approx(0.8 * 0.1 + 0.2 * 0.4 / 1.3)
    assert sum(plan.weights.values()) == pytest.approx(1)
    # preserve_total keeps every source's total tokens, moving math from phase 1 to the end
    kept = end_phase_upsampling(base, fraction=0.2, upsample={"math": 4.0}, preserve_total=True)
    assert kept.weights == pytest.approx(base.weights)
    assert kept.phases[0].weights["math"] == pytest.approx((0.1 - 0.2 * 0.4 / 1.3) / 0.8)
    with pytest.raises(ValueError, match="math"):
        end_phase_upsampling(base, fraction=0.5, end_weights={"math": 1.0}, preserve_total=True)


def test_plan_mixture_config_and_json_roundtrip() -> None:
    tokens = pl.DataFrame({"source": ["a", "b", "b"], "tokens": [100, 50, 50]})
    plan = plan_mixture({"method": "unimax", "budget": 300, "max_epochs": 1,
                         "end_phase": {"fraction": 0.1, "upsample": {"a": 2}}}, tokens)
    assert plan.method == "unimax+end_phase" and len(plan.phases) == 2
    back = MixturePlan.from_dict(json.loads(plan.to_json()))
    assert back.to_json() == plan.to_json()
    frame = plan.to_frame()
    assert frame.columns == ["source", "weight", "tokens_available", "tokens_planned", "epochs", "method"]
    assert plan.phases_frame().height == 4
    with pytest.raises(ValueError, match="proxy-run"):
        plan_mixture(MixtureConfig(method="regmix", target="loss"), tokens)
    with pytest.raises(ValueError, match="unknown sources"):
        plan_mixture({"method": "fixed", "weights": {"zzz": 1}}, tokens)
