"""Mixture-ratio planners: which share of the training tokens each source gets.

Every planner returns a ``MixturePlan``: the overall weights per source (summing to 1), the token
budget they apply to, the tokens available per source (so the implied epochs follow), one or
more phases, and the planner's diagnostics. Inputs are plain mappings ``source -> tokens`` (or a
Polars frame with ``source`` and ``tokens`` columns) and, for the fitted planners, a Polars frame
of proxy-run results that the user's trainer produced: one row per run, one column per source
holding that run's mixture weight, and one column per measured loss or score.

Planners (defaults in brackets):

- ``temperature``: p_i proportional to (n_i / N) ** (1 / tau) [tau = 1: proportional to size;
  large tau tends to uniform].
- ``unimax`` (Chung et al., 2023): go through the sources from smallest to largest; each gets an
  equal share of the budget still unassigned, but never more than ``max_epochs`` [4] passes
  over its own tokens.
- ``regmix`` (Liu et al., 2024): fit a LightGBM regressor from mixture weights to the target
  over the proxy runs, score many simulated mixtures drawn from the same Dirichlet sampler
  around the token prior (``regmix_candidates``, which also proposes the proxy runs), and return
  the mean of the ``top_k`` [100] best predicted mixtures.
- ``mixing_law`` (Ye et al., 2024): fit loss_i(r) = c_i + k_i * exp(sum_j t_ij r_j) for every
  validation loss i over the proxy runs and minimise the weighted sum of the fitted losses over
  the simplex (and under the epoch caps).
- ``critical_mixture_ratio`` (Gu et al., 2024, CMR scaling law): for continual pre-training
  with one general and one domain source, fit general and domain loss against training tokens
  as saturating power laws L(T) = a + b * T**c per measured domain ratio, predict them at the
  budget, and return the largest domain ratio whose general loss stays within a tolerance of the
  reference [1% relative].
- ``end_phase_upsampling``: a second phase for the last ``fraction`` [0.15] of the tokens with
  some sources up-weighted (annealing on high-quality data).

Cost: all planners except RegMix run in milliseconds; RegMix spends about a second per 100k
simulated mixtures (LightGBM prediction, one thread).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

TokenCounts = Mapping[str, float] | pl.DataFrame


# ----------------------------------------------------------------------------------------------
# result objects
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """A stretch of the token budget, [start, end) as fractions of it, with its own weights."""

    name: str
    start: float
    end: float
    weights: dict[str, float]

    @property
    def fraction(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class MixturePlan:
    """Weights per source, the budget they apply to, and what the planner saw.

    ``weights`` are the overall shares of the budget; with several phases they are the
    fraction-weighted sum of the phases' weights. ``epochs[s]`` is how many passes over source
    ``s`` the plan implies: ``weights[s] * budget / tokens[s]``.
    """

    method: str
    weights: dict[str, float]
    tokens: dict[str, float]
    budget: float
    phases: tuple[Phase, ...] = ()
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.phases:
            object.__setattr__(self, "phases", (Phase("main", 0.0, 1.0, dict(self.weights)),))

    @property
    def sources(self) -> list[str]:
        return list(self.weights)

    @property
    def epochs(self) -> dict[str, float]:
        return {s: (w * self.budget / self.tokens[s]) if self.tokens.get(s) else math.inf if w > 0 else 0.0
                for s, w in self.weights.items()}

    @property
    def planned_tokens(self) -> dict[str, float]:
        return {s: w * self.budget for s, w in self.weights.items()}

    def to_frame(self) -> pl.DataFrame:
        """One row per source: weight, tokens available, tokens planned, epochs."""
        ep, planned = self.epochs, self.planned_tokens
        return pl.DataFrame({
            "source": self.sources,
            "weight": [self.weights[s] for s in self.sources],
            "tokens_available": [float(self.tokens.get(s, 0.0)) for s in self.sources],
            "tokens_planned": [planned[s] for s in self.sources],
            "epochs": [ep[s] for s in self.sources],
        }).with_columns(pl.lit(self.method).alias("method"))

    def phases_frame(self) -> pl.DataFrame:
        """One row per (phase, source): the phase bounds and the source's weight in it."""
        rows = [{"phase": p.name, "phase_index": i, "start": p.start, "end": p.end, "source": s,
                 "weight": p.weights.get(s, 0.0), "tokens_planned": p.weights.get(s, 0.0) * p.fraction * self.budget}
                for i, p in enumerate(self.phases) for s in self.sources]
        return pl.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "budget": self.budget, "weights": dict(self.weights), "tokens": dict(self.tokens),
            "epochs": self.epochs,
            "phases": [{"name": p.name, "start": p.start, "end": p.end, "weights": dict(p.weights)} for p in self.phases],
            "diagnostics": _jsonable(self.diagnostics),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): the same plan always gives the same bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixturePlan:
        phases = tuple(Phase(p["name"], float(p["start"]), float(p["end"]), dict(p["weights"])) for p in d.get("phases", []))
        return cls(method=d["method"], weights=dict(d["weights"]), tokens=dict(d["tokens"]), budget=float(d["budget"]),
                   phases=phases, diagnostics=dict(d.get("diagnostics", {})))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def token_counts(tokens: TokenCounts) -> dict[str, float]:
    """``{source: tokens}`` from a mapping or a frame with ``source`` and ``tokens`` columns."""
    if isinstance(tokens, pl.DataFrame):
        missing = {"source", "tokens"} - set(tokens.columns)
        if missing:
            raise ValueError(f"token table needs columns source and tokens; missing {sorted(missing)}")
        agg = tokens.group_by("source", maintain_order=True).agg(pl.col("tokens").sum())
        out = {str(s): float(t) for s, t in agg.iter_rows()}
    else:
        out = {str(s): float(t) for s, t in tokens.items()}
    if not out:
        raise ValueError("no sources given")
    bad = [s for s, t in out.items() if not (t >= 0 and math.isfinite(t))]
    if bad:
        raise ValueError(f"token counts must be finite and >= 0; bad for {bad}")
    return out


def _caps(sources: Sequence[str], max_epochs: float | Mapping[str, float] | None) -> dict[str, float]:
    if max_epochs is None:
        return {s: math.inf for s in sources}
    if isinstance(max_epochs, Mapping):
        return {s: float(max_epochs.get(s, math.inf)) for s in sources}
    return {s: float(max_epochs) for s in sources}


def _normalise(w: Mapping[str, float]) -> dict[str, float]:
    tot = float(sum(w.values()))
    if not tot > 0:
        raise ValueError("weights sum to zero")
    return {s: float(v) / tot for s, v in w.items()}


def _weight_columns(results: pl.DataFrame, sources: Sequence[str]) -> np.ndarray:
    missing = [s for s in sources if s not in results.columns]
    if missing:
        raise ValueError(f"proxy results lack weight columns for sources {missing}")
    x = results.select([pl.col(s).cast(pl.Float64) for s in sources]).to_numpy()
    if np.isnan(x).any() or (x < 0).any():
        raise ValueError("proxy-run weights must be non-negative numbers")
    sums = x.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError("a proxy run has all-zero weights")
    return x / sums


def _target_vector(results: pl.DataFrame, target: str | Sequence[str]) -> np.ndarray:
    cols = [target] if isinstance(target, str) else list(target)
    missing = [c for c in cols if c not in results.columns]
    if missing:
        raise ValueError(f"proxy results lack target columns {missing}")
    y = results.select([pl.col(c).cast(pl.Float64) for c in cols]).to_numpy().mean(axis=1)
    if not np.isfinite(y).all():
        raise ValueError("target values must be finite")
    return y


# ----------------------------------------------------------------------------------------------
# temperature and UniMax
# ----------------------------------------------------------------------------------------------
def temperature(tokens: TokenCounts, tau: float = 1.0, budget: float | None = None) -> MixturePlan:
    """Temperature sampling: weight_i proportional to (n_i / N) ** (1 / tau).

    ``budget`` defaults to the total tokens available (one pass over the union).
    """
    if not tau > 0:
        raise ValueError("tau must be > 0")
    n = token_counts(tokens)
    total = sum(n.values())
    if not total > 0:
        raise ValueError("all sources are empty")
    raw = {s: (v / total) ** (1.0 / tau) if v > 0 else 0.0 for s, v in n.items()}
    return MixturePlan("temperature", _normalise(raw), n, float(budget if budget is not None else total),
                       diagnostics={"tau": tau})


def unimax(tokens: TokenCounts, budget: float, max_epochs: float | Mapping[str, float] = 4.0) -> MixturePlan:
    """UniMax: a uniform split of the budget, capped at ``max_epochs`` passes per source.

    Sources are visited from the smallest to the largest (ties by name); each receives the
    remaining budget divided by the number of sources still to visit, or its cap if that is
    less. If even the caps cannot fill the budget, the plan's budget is what the caps allow and
    ``diagnostics['unallocated']`` says how much was left.
    """
    n = token_counts(tokens)
    if not budget > 0:
        raise ValueError("budget must be > 0")
    caps = _caps(list(n), max_epochs)
    order = sorted(n, key=lambda s: (n[s], s))
    remaining = float(budget)
    alloc: dict[str, float] = {}
    capped: list[str] = []
    for i, s in enumerate(order):
        share = remaining / (len(order) - i)
        cap = caps[s] * n[s]
        if share > cap:
            share = cap
            capped.append(s)
        alloc[s] = share
        remaining -= share
    used = sum(alloc.values())
    if not used > 0:
        raise ValueError("no tokens available to allocate")
    weights = {s: alloc[s] / used for s in n}
    return MixturePlan("unimax", weights, n, used, diagnostics={
        "max_epochs": max_epochs if not isinstance(max_epochs, Mapping) else dict(max_epochs),
        "requested_budget": float(budget), "unallocated": max(0.0, float(budget) - used),
        "capped_sources": capped, "budgets": {s: alloc[s] for s in n}})


# ----------------------------------------------------------------------------------------------
# RegMix
# ----------------------------------------------------------------------------------------------
def _stable_rng(seed: int, *salt: str) -> np.random.Generator:
    import hashlib
    h = hashlib.sha256(("\x1f".join([str(seed), *salt])).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def regmix_candidates(tokens: TokenCounts, n: int, seed: int = 0, *, budget: float | None = None,
                      max_epochs: float | Mapping[str, float] | None = None, prior_temperature: float = 1.0,
                      min_strength: float = 0.1, max_strength: float = 5.0, strength_levels: int = 15,
                      min_weight: float = 0.0) -> pl.DataFrame:
    """Draw ``n`` mixtures around the token prior, as RegMix does for proxy runs and simulation.

    Each mixture comes from Dirichlet(prior * s), with the concentration ``s`` picked uniformly
    among ``strength_levels`` log-spaced values in [min_strength, max_strength]: small ``s``
    gives spiky mixtures, large ``s`` mixtures near the prior. The prior is the token share,
    raised to ``1 / prior_temperature`` and renormalised. With ``budget`` and ``max_epochs``,
    mixtures that would repeat a source more than its cap are rejected and redrawn. Weights below
    ``min_weight`` are zeroed and the row renormalised. Returns one column per source.
    """
    nt = token_counts(tokens)
    sources = list(nt)
    counts = np.array([nt[s] for s in sources])
    if not counts.sum() > 0:
        raise ValueError("all sources are empty")
    prior = (counts / counts.sum()) ** (1.0 / prior_temperature)
    prior = prior / prior.sum()
    prior = np.maximum(prior, 1e-12)
    levels = np.logspace(np.log10(min_strength), np.log10(max_strength), strength_levels)
    upper = np.full(len(sources), np.inf)
    if budget is not None and max_epochs is not None:
        caps = _caps(sources, max_epochs)
        upper = np.array([caps[s] * nt[s] / budget for s in sources])
        if upper.sum() < 1:
            raise ValueError("the epoch caps cannot fill the budget: no mixture is feasible")
    rng = _stable_rng(seed, "regmix", *sources)
    out: list[np.ndarray] = []
    have, tries = 0, 0
    while have < n:
        tries += 1
        if tries > 1000:
            raise ValueError("the epoch caps reject almost every sampled mixture; loosen them or lower the budget")
        m = max(1024, 2 * (n - have))
        s = levels[rng.integers(0, len(levels), size=m)]
        g = rng.gamma(shape=prior[None, :] * s[:, None], size=(m, len(sources)))
        tot = g.sum(axis=1)
        g = g[tot > 0] / tot[tot > 0, None]
        if min_weight > 0:
            g = np.where(g < min_weight, 0.0, g)
            t2 = g.sum(axis=1)
            g = g[t2 > 0] / t2[t2 > 0, None]
        g = g[(g <= upper[None, :] + 1e-12).all(axis=1)]
        out.append(g)
        have += len(g)
    w = np.concatenate(out)[:n]
    return pl.DataFrame({s: w[:, j] for j, s in enumerate(sources)})


def regmix(results: pl.DataFrame, target: str | Sequence[str], tokens: TokenCounts, *, budget: float | None = None,
           max_epochs: float | Mapping[str, float] | None = None, maximize: bool = False,
           n_simulations: int = 100_000, top_k: int = 100, seed: int = 0, prior_temperature: float = 1.0,
           lgbm_params: Mapping[str, Any] | None = None) -> MixturePlan:
    """RegMix: regress the target on the mixture weights, then search simulated mixtures.

    ``results``: one row per proxy run, a weight column per source (rows are renormalised) and
    the target column(s) (several are averaged, e.g. per-domain validation losses). Lower is
    better unless ``maximize``. The regressor is LightGBM (deterministic, one thread); the search
    draws ``n_simulations`` mixtures with ``regmix_candidates`` (same prior and caps) and returns
    the mean of the ``top_k`` best predicted ones.
    """
    import lightgbm as lgb

    nt = token_counts(tokens)
    sources = list(nt)
    x = _weight_columns(results, sources)
    y = _target_vector(results, target)
    if len(y) < 8:
        raise ValueError(f"RegMix needs at least 8 proxy runs to fit a regressor, got {len(y)}")
    params: dict[str, Any] = {"objective": "regression", "learning_rate": 0.03, "num_leaves": 15,
                              "min_data_in_leaf": 5, "bagging_fraction": 1.0, "feature_fraction": 1.0,
                              "lambda_l2": 0.0, "deterministic": True, "force_col_wise": True, "num_threads": 1,
                              "verbose": -1, "seed": seed}
    params.update(lgbm_params or {})
    rounds = int(params.pop("num_boost_round", 600))
    model = lgb.train(params, lgb.Dataset(x, y, params={"verbose": -1, "min_data_in_bin": 1}), num_boost_round=rounds)
    budget_ = float(budget if budget is not None else sum(nt.values()))
    cand = regmix_candidates(nt, n_simulations, seed + 1, budget=budget_ if max_epochs is not None else None,
                             max_epochs=max_epochs, prior_temperature=prior_temperature).to_numpy()
    pred = np.asarray(model.predict(cand), dtype=np.float64)
    k = min(top_k, len(cand))
    idx = np.argsort(-pred if maximize else pred, kind="stable")[:k]
    w = cand[idx].mean(axis=0)
    w = w / w.sum()
    fitted = np.asarray(model.predict(x), dtype=np.float64)
    rank_corr = float(pl.DataFrame({"a": y, "b": fitted}).select(pl.corr("a", "b", method="spearman")).item())
    best_seen = int(np.argmax(y) if maximize else np.argmin(y))
    return MixturePlan("regmix", {s: float(w[j]) for j, s in enumerate(sources)}, nt, budget_, diagnostics={
        "target": target if isinstance(target, str) else list(target), "maximize": maximize,
        "n_runs": len(y), "n_simulations": len(cand), "top_k": k,
        "predicted_target": float(model.predict(w[None, :])[0]),
        "top_k_predicted_mean": float(pred[idx].mean()),
        "best_run_target": float(y[best_seen]), "train_spearman": rank_corr,
        "feature_importance": {s: int(v) for s, v in zip(sources, model.feature_importance())},
    })


# ----------------------------------------------------------------------------------------------
# data mixing law
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MixingLawFit:
    """loss(r) = c + k * exp(t . r[:-1]) for one validation loss; the last source is the reference.

    Since weights sum to one, a full t_ij vector is only defined up to a constant shift (absorbed
    by k), so the fit pins t of the last source at 0: ``t`` has one entry per other source.
    """

    c: float
    k: float
    t: np.ndarray
    sse: float
    r2: float

    def predict(self, r: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(r)
        return self.c + self.k * np.exp(r[:, :-1] @ self.t)


def fit_mixing_law(weights: np.ndarray, loss: np.ndarray) -> MixingLawFit:
    """Least-squares fit of c + k * exp(t . r) (see ``MixingLawFit``).

    For a fixed c the model is linear in log space, so c is first searched on a grid (below the
    smallest loss for k > 0, above the largest for k < 0) with the rest solved by linear least
    squares, then all parameters are refined together by ``scipy.optimize.least_squares``.
    """
    from scipy.optimize import least_squares

    r = np.asarray(weights, dtype=float)
    y = np.asarray(loss, dtype=float)
    n, m = r.shape
    if n < m + 2:
        raise ValueError(f"a mixing law over {m} sources needs at least {m + 2} runs, got {n}")
    design = np.column_stack([np.ones(n), r[:, :-1]])
    lo, hi = float(y.min()), float(y.max())
    span = max(hi - lo, 1e-12)
    best: tuple[float, float, float, np.ndarray] | None = None
    offsets = span * np.logspace(-4, 2, 80)
    for sign in (1.0, -1.0):
        for off in offsets:
            c = lo - off if sign > 0 else hi + off
            z = np.log(sign * (y - c))
            beta, *_ = np.linalg.lstsq(design, z, rcond=None)
            pred = c + sign * np.exp(design @ beta)
            sse = float(((pred - y) ** 2).sum())
            if best is None or sse < best[0]:
                best = (sse, c, sign, beta)
    assert best is not None
    _, c0, sign, beta0 = best

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] + sign * np.exp(p[1] + r[:, :-1] @ p[2:]) - y

    sol = least_squares(resid, np.concatenate([[c0], beta0]), method="lm", max_nfev=20_000, xtol=1e-14, ftol=1e-14)
    p = sol.x if np.isfinite(sol.x).all() and (sol.fun ** 2).sum() <= best[0] else np.concatenate([[c0], beta0])
    pred = resid(p) + y
    sse = float(((pred - y) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    return MixingLawFit(c=float(p[0]), k=float(sign * np.exp(p[1])), t=np.asarray(p[2:], dtype=float), sse=sse,
                        r2=1.0 - sse / sst if sst > 0 else 1.0)


def _minimise_on_simplex(f, m: int, upper: np.ndarray, starts: list[np.ndarray]) -> np.ndarray:
    from scipy.optimize import minimize

    cons = ({"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones_like(x)},)
    bounds = [(0.0, float(min(1.0, u))) for u in upper]
    best_x, best_f = None, math.inf
    for x0 in starts:
        x0 = np.clip(x0, 0, upper)
        if x0.sum() <= 0:
            continue
        x0 = x0 / x0.sum()
        res = minimize(f, x0, method="SLSQP", bounds=bounds, constraints=cons,
                       options={"ftol": 1e-13, "maxiter": 1000})
        x = np.clip(res.x, 0, upper)
        x = x / x.sum()
        fx = float(f(x))
        if fx < best_f - 1e-15:
            best_x, best_f = x, fx
    if best_x is None:
        raise ValueError("no feasible start for the mixture search")
    return best_x


def mixing_law(results: pl.DataFrame, losses: Sequence[str] | Mapping[str, float], tokens: TokenCounts, *,
               budget: float | None = None, max_epochs: float | Mapping[str, float] | None = None) -> MixturePlan:
    """Data mixing law: fit each validation loss as c + k * exp(sum_j t_j r_j), minimise the target.

    ``losses``: the loss columns of ``results``, or a mapping ``column -> weight`` of the target
    (a weighted sum of the fitted losses; equal weights by default). With ``max_epochs`` the
    search keeps every source within its cap given ``budget`` (default: all tokens).
    """
    nt = token_counts(tokens)
    sources = list(nt)
    x = _weight_columns(results, sources)
    lw = dict(losses) if isinstance(losses, Mapping) else {c: 1.0 for c in losses}
    if not lw:
        raise ValueError("name at least one loss column")
    tot = sum(lw.values())
    lw = {c: v / tot for c, v in lw.items()}
    fits = {c: fit_mixing_law(x, _target_vector(results, c)) for c in lw}
    budget_ = float(budget if budget is not None else sum(nt.values()))
    caps = _caps(sources, max_epochs)
    upper = np.array([min(1.0, caps[s] * nt[s] / budget_) for s in sources])
    if upper.sum() < 1 - 1e-12:
        raise ValueError("the epoch caps cannot fill the budget")

    def target(r: np.ndarray) -> float:
        return float(sum(v * fits[c].predict(r)[0] for c, v in lw.items()))

    m = len(sources)
    prior = np.array([nt[s] for s in sources]) / sum(nt.values())
    observed = sorted(range(len(x)), key=lambda i: target(x[i]))[:5]
    starts = [np.full(m, 1.0 / m), prior] + [x[i] for i in observed] + list(np.eye(m))
    w = _minimise_on_simplex(target, m, upper, starts)
    return MixturePlan("mixing_law", {s: float(w[j]) for j, s in enumerate(sources)}, nt, budget_, diagnostics={
        "losses": lw, "predicted_target": target(w),
        "fits": {c: {"c": f.c, "k": f.k, "t": f.t.tolist(), "t_reference_source": sources[-1], "r2": f.r2, "sse": f.sse}
                 for c, f in fits.items()},
        "n_runs": len(x)})


# ----------------------------------------------------------------------------------------------
# critical mixture ratio (continual pre-training)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerLawFit:
    """L(T) = a + b * (T / t_ref) ** c."""

    a: float
    b: float
    c: float
    t_ref: float
    sse: float

    def predict(self, t: np.ndarray | float) -> np.ndarray:
        return self.a + self.b * (np.asarray(t, dtype=float) / self.t_ref) ** self.c


def fit_power_law(t: np.ndarray, loss: np.ndarray) -> PowerLawFit:
    """Fit a + b * (T / t_ref) ** c: a grid over the exponent c (linear least squares for a and b
    at each), then a joint refinement. ``t_ref`` is the geometric mean of T (conditioning only)."""
    from scipy.optimize import least_squares

    t = np.asarray(t, dtype=float)
    y = np.asarray(loss, dtype=float)
    if len(t) < 3 or (t <= 0).any():
        raise ValueError("a power-law fit needs at least 3 points with tokens > 0")
    t_ref = float(np.exp(np.log(t).mean()))
    x = t / t_ref
    best: tuple[float, float, float, float] | None = None
    for c in np.concatenate([np.linspace(-3, -0.005, 300), np.linspace(0.005, 3, 300)]):
        design = np.column_stack([np.ones_like(x), x ** c])
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        sse = float(((design @ [a, b] - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(a), float(b), float(c))
    assert best is not None
    sse0, a0, b0, c0 = best
    if len(t) > 3 and abs(b0) > 1e-12:
        sol = least_squares(lambda p: p[0] + p[1] * x ** p[2] - y, [a0, b0, c0], method="lm", max_nfev=10_000,
                            xtol=1e-15, ftol=1e-15)
        sse1 = float((sol.fun ** 2).sum())
        if np.isfinite(sol.x).all() and sse1 <= sse0:
            a0, b0, c0, sse0 = float(sol.x[0]), float(sol.x[1]), float(sol.x[2]), sse1
    return PowerLawFit(a0, b0, c0, t_ref, sse0)


def critical_mixture_ratio(runs: pl.DataFrame, *, budget: float, domain_source: str, general_source: str,
                           tokens: TokenCounts | None = None, tolerance: float = 0.01, relative: bool = True,
                           reference_general_loss: float | None = None, ratio_col: str = "ratio",
                           tokens_col: str = "tokens", general_col: str = "general_loss",
                           domain_col: str = "domain_loss") -> MixturePlan:
    """Largest domain ratio whose general loss at ``budget`` tokens stays within tolerance.

    ``runs``: continual pre-training measurements, one row per (ratio, tokens trained) with the
    general and domain validation losses. For every ratio, general and domain loss are fitted as
    ``a + b * T**c`` and predicted at ``budget``; the predicted general loss is interpolated
    linearly between measured ratios. Feasible: general loss <= reference * (1 + tolerance)
    (``relative``) or reference + tolerance. The reference defaults to the predicted general loss
    of the smallest measured ratio. Returns weights ``{domain_source: r, general_source: 1 - r}``.
    """
    need = {ratio_col, tokens_col, general_col, domain_col}
    if missing := need - set(runs.columns):
        raise ValueError(f"CMR runs lack columns {sorted(missing)}")
    ratios = sorted(float(r) for r in runs.get_column(ratio_col).unique().to_list())
    if len(ratios) < 2:
        raise ValueError("CMR needs runs at two or more domain ratios")
    per: list[dict[str, Any]] = []
    for r in ratios:
        sub = runs.filter(pl.col(ratio_col) == r).sort(tokens_col)
        t = sub.get_column(tokens_col).cast(pl.Float64).to_numpy()
        g = fit_power_law(t, sub.get_column(general_col).cast(pl.Float64).to_numpy())
        d = fit_power_law(t, sub.get_column(domain_col).cast(pl.Float64).to_numpy())
        per.append({"ratio": r, "general_at_budget": float(g.predict(budget)), "domain_at_budget": float(d.predict(budget)),
                    "general_fit": {"a": g.a, "b": g.b, "c": g.c, "t_ref": g.t_ref},
                    "domain_fit": {"a": d.a, "b": d.b, "c": d.c, "t_ref": d.t_ref}})
    rs = np.array([p["ratio"] for p in per])
    gl = np.array([p["general_at_budget"] for p in per])
    dl = np.array([p["domain_at_budget"] for p in per])
    ref = float(reference_general_loss if reference_general_loss is not None else gl[0])
    limit = ref * (1 + tolerance) if relative else ref + tolerance
    ok = gl <= limit + 1e-12
    if not ok[0]:
        r_star = 0.0
    else:
        # the first measured ratio past which the general loss leaves the band
        bad = np.flatnonzero(~ok)
        if bad.size == 0:
            r_star = float(rs[-1])
        else:
            j = int(bad[0])
            r0, r1, g0, g1 = rs[j - 1], rs[j], gl[j - 1], gl[j]
            r_star = float(r0 + (limit - g0) * (r1 - r0) / (g1 - g0)) if g1 != g0 else float(r0)
    nt = token_counts(tokens) if tokens is not None else {domain_source: math.nan, general_source: math.nan}
    for s in (domain_source, general_source):
        nt.setdefault(s, math.nan)
    weights = {domain_source: r_star, general_source: 1.0 - r_star}
    return MixturePlan("critical_mixture_ratio", weights, nt, float(budget), diagnostics={
        "critical_ratio": r_star, "reference_general_loss": ref, "general_loss_limit": limit,
        "tolerance": tolerance, "relative": relative,
        "predicted_general_loss": float(np.interp(r_star, rs, gl)),
        "predicted_domain_loss": float(np.interp(r_star, rs, dl)), "per_ratio": per})


# ----------------------------------------------------------------------------------------------
# end-phase upsampling
# ----------------------------------------------------------------------------------------------
def end_phase_upsampling(base: MixturePlan, *, fraction: float = 0.15, upsample: Mapping[str, float] | None = None,
                         end_weights: Mapping[str, float] | None = None, preserve_total: bool = False,
                         name: str = "anneal") -> MixturePlan:
    """Add a final phase over the last ``fraction`` of the budget with its own mixture.

    The end mixture is either ``end_weights`` (normalised) or the base weights multiplied by
    ``upsample`` factors (``{source: factor}``, others 1) and renormalised. By default the first
    phase keeps the base weights, so the overall mixture shifts towards the upsampled sources.
    With ``preserve_total`` the first phase is re-weighted instead so that each source's total
    tokens stay those of ``base``; a ``ValueError`` names the sources for which that is
    impossible (the end phase alone would need more than their total).
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must be in (0, 1)")
    if (upsample is None) == (end_weights is None):
        raise ValueError("give exactly one of upsample or end_weights")
    sources = base.sources
    w = dict(base.weights)
    if end_weights is not None:
        unknown = set(end_weights) - set(sources)
        if unknown:
            raise ValueError(f"end_weights name unknown sources {sorted(unknown)}")
        w2 = _normalise({s: float(end_weights.get(s, 0.0)) for s in sources})
    else:
        assert upsample is not None
        unknown = set(upsample) - set(sources)
        if unknown:
            raise ValueError(f"upsample names unknown sources {sorted(unknown)}")
        if any(v < 0 for v in upsample.values()):
            raise ValueError("upsample factors must be >= 0")
        w2 = _normalise({s: w[s] * float(upsample.get(s, 1.0)) for s in sources})
    if preserve_total:
        w1 = {s: (w[s] - fraction * w2[s]) / (1 - fraction) for s in sources}
        bad = sorted(s for s, v in w1.items() if v < -1e-12)
        if bad:
            raise ValueError(f"preserve_total is impossible for {bad}: the end phase alone needs more of them than the "
                             "whole plan has; lower the fraction or the upsampling")
        w1 = _normalise({s: max(0.0, v) for s, v in w1.items()})
    else:
        w1 = w
    overall = {s: (1 - fraction) * w1[s] + fraction * w2[s] for s in sources}
    phases = (Phase("main", 0.0, 1.0 - fraction, w1), Phase(name, 1.0 - fraction, 1.0, w2))
    diag = dict(base.diagnostics)
    diag["end_phase"] = {"fraction": fraction, "upsample": dict(upsample) if upsample else None,
                         "preserve_total": preserve_total, "base_method": base.method}
    return MixturePlan(base.method + "+end_phase", overall, dict(base.tokens), base.budget, phases, diag)


# ----------------------------------------------------------------------------------------------
# configuration: what a pipeline file says
# ----------------------------------------------------------------------------------------------
class EndPhaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(default=0.15, gt=0, lt=1)
    upsample: dict[str, float] | None = None
    weights: dict[str, float] | None = None
    preserve_total: bool = False


# Fitted methods need the `mixture` extra (engines/extras.py): checked when the pipeline is validated.
METHOD_REQUIRES: dict[str, dict[str, tuple[str, ...]]] = {
    "regmix": {"mixture": ("lightgbm",)}, "mixing_law": {"mixture": ("scipy",)}, "cmr": {"mixture": ("scipy",)}}


class MixtureConfig(BaseModel):
    """The ``plan.mixture`` block of a pipeline: which planner, its parameters, the end phase.

    ``budget``: tokens to train on (default: all tokens kept). ``max_epochs``: a cap per source
    (a number for all, or a mapping). ``weights``: for ``method: fixed``. ``results``: path of a
    Parquet/CSV table of proxy runs (RegMix, mixing law, CMR); the caller loads it.
    ``group_by``: plan over the values of an annotation column (``stage.column``, e.g. the
    ``cluster`` of ``semantic_dedup``: topics) instead of over sources; each group is named
    ``<column>=<value>`` (``<column>=null`` for documents without one) wherever a source name
    would appear (weights, max_epochs, end_phase.upsample, the manifest's mixture).
    ``synthetic_share``: the share of the release drawn from derived sources of rewrite stages
    (planning/synthetic.py); the method plans the ingested sources.
    """

    model_config = ConfigDict(extra="forbid")
    method: Literal["proportional", "fixed", "temperature", "unimax", "regmix", "mixing_law", "cmr"] = "proportional"
    budget: float | None = Field(default=None, gt=0)
    max_epochs: float | dict[str, float] | None = None
    weights: dict[str, float] | None = None
    tau: float = Field(default=1.0, gt=0)
    target: str | list[str] | None = None
    losses: list[str] | dict[str, float] | None = None
    maximize: bool = False
    n_simulations: int = Field(default=100_000, gt=0)
    top_k: int = Field(default=100, gt=0)
    seed: int = 0
    results: str | None = None
    domain_source: str | None = None
    general_source: str | None = None
    tolerance: float = Field(default=0.01, ge=0)
    end_phase: EndPhaseConfig | None = None
    group_by: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    # Share of the release taken from derived (synthetic) sources; the method plans the rest
    # (planning/synthetic.py).
    synthetic_share: float | None = Field(default=None, gt=0, lt=1)


def plan_mixture(cfg: MixtureConfig | Mapping[str, Any], tokens: TokenCounts, results: pl.DataFrame | None = None) -> MixturePlan:
    """Run the configured planner on the token counts (and proxy results), then the end phase."""
    if not isinstance(cfg, MixtureConfig):
        cfg = MixtureConfig.model_validate(dict(cfg))
    nt = token_counts(tokens)
    budget = cfg.budget if cfg.budget is not None else sum(nt.values())
    if cfg.method in ("regmix", "mixing_law", "cmr") and results is None:
        raise ValueError(f"mixture method {cfg.method!r} needs a table of proxy-run results")
    if cfg.method == "proportional":
        plan = temperature(nt, 1.0, budget)
        plan = MixturePlan("proportional", plan.weights, plan.tokens, plan.budget)
    elif cfg.method == "fixed":
        if not cfg.weights:
            raise ValueError("method fixed needs weights")
        unknown = set(cfg.weights) - set(nt)
        if unknown:
            raise ValueError(f"weights name unknown sources {sorted(unknown)}")
        plan = MixturePlan("fixed", _normalise({s: cfg.weights.get(s, 0.0) for s in nt}), nt, budget)
    elif cfg.method == "temperature":
        plan = temperature(nt, cfg.tau, budget)
    elif cfg.method == "unimax":
        plan = unimax(nt, budget, cfg.max_epochs if cfg.max_epochs is not None else 4.0)
    elif cfg.method == "regmix":
        assert results is not None
        if cfg.target is None:
            raise ValueError("regmix needs a target column")
        plan = regmix(results, cfg.target, nt, budget=budget, max_epochs=cfg.max_epochs, maximize=cfg.maximize,
                      n_simulations=cfg.n_simulations, top_k=cfg.top_k, seed=cfg.seed)
    elif cfg.method == "mixing_law":
        assert results is not None
        if not cfg.losses:
            raise ValueError("mixing_law needs the loss columns")
        plan = mixing_law(results, cfg.losses, nt, budget=budget, max_epochs=cfg.max_epochs)
    else:
        assert results is not None
        if not (cfg.domain_source and cfg.general_source):
            raise ValueError("cmr needs domain_source and general_source")
        plan = critical_mixture_ratio(results, budget=budget, domain_source=cfg.domain_source,
                                      general_source=cfg.general_source, tokens=nt, tolerance=cfg.tolerance)
    if cfg.end_phase is not None:
        e = cfg.end_phase
        plan = end_phase_upsampling(plan, fraction=e.fraction, upsample=e.upsample, end_weights=e.weights,
                                    preserve_total=e.preserve_total)
    return plan
