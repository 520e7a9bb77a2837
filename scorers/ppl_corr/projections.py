"""Projections of per-domain estimates onto the capped sampling simplex.

Feasible set: {w : 0 <= w_i <= cap_i, sum_i w_i = 1}. Everything is float64.

Relation to the reference package ``perplexity-correlations`` (``projection.linear``
and ``projection.l2``, called there with ``tau`` for the caps):

* ``linear`` fills the domains from the highest estimate down, each up to its cap,
  and gives the first domain that would overflow the remainder. The package builds
  its answer in **float32** (``np.zeros_like(..., dtype=np.float32)``; the remainder
  is ``1 - sum`` of that float32 array). Ours is float64 and sums to 1 to rounding, so
  the two agree to float32 precision (~1e-6), not 1e-9. Tied estimates: with
  ``ties="reference"`` (default) the order is NumPy's default ``argsort`` of
  ``-estimate``, as in the package (can differ between CPUs); ``ties="stable"`` gives
  the lower domain index priority, deterministic everywhere.
* ``l2`` is the Euclidean projection. The package bisects the offset c in
  ``clip(estimate + c, 0, tau)`` to ``atol=1e-12``; we solve for c exactly by sorting
  the 2D breakpoints of the piecewise-linear ``sum(clip(...))``, so the two agree to
  ~1e-12 per weight.
* Caps: the package requires every cap > 0 and ``sum(caps) >= 1``. We also accept
  zero caps (that domain gets weight 0).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["caps_from_tokens", "linear", "l2", "project", "ProjectionName"]

ProjectionName = Literal["linear", "l2"]


def caps_from_tokens(domain_tokens: np.ndarray, ratio: float) -> np.ndarray:
    """Per-domain caps so that no domain is asked for more tokens than it has.

    Selecting a fraction ``ratio`` of all tokens T gives a training set of
    ``ratio * T`` tokens; weight w_i asks for ``w_i * ratio * T`` tokens of domain i,
    which holds ``t_i``. The largest weight without repeating data is therefore
    ``t_i / (ratio * T) = share_i / ratio`` (the paper's tau: as large as possible
    without duplicating the domain's data). Caps sum to ``1 / ratio >= 1``.
    """
    t = np.asarray(domain_tokens, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError("domain_tokens must be 1-dimensional")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("domain_tokens must be finite and non-negative")
    total = t.sum()
    if total <= 0:
        raise ValueError("domain_tokens sum to zero")
    if not (0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return (t / total) / ratio


def _check(estimate: np.ndarray, caps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(estimate, dtype=np.float64)
    c = np.asarray(caps, dtype=np.float64)
    if e.ndim != 1 or c.ndim != 1:
        raise ValueError("estimate and caps must be 1-dimensional")
    if e.shape != c.shape:
        raise ValueError(f"estimate has {e.size} domains but caps has {c.size}")
    if not np.all(np.isfinite(e)):
        raise ValueError("estimate contains NaN or infinite values")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("caps must be finite and non-negative")
    if c.sum() < 1:
        raise ValueError(f"infeasible: caps sum to {c.sum():g} < 1")
    return e, c


def linear(
    estimate: np.ndarray, caps: np.ndarray, *, ties: Literal["reference", "stable"] = "reference"
) -> np.ndarray:
    """Maximise <estimate, w> over the capped simplex: fill best-ranked domains first."""
    e, c = _check(estimate, caps)
    if ties == "reference":
        order = np.argsort(-e)
    elif ties == "stable":
        order = np.argsort(-e, kind="stable")
    else:
        raise ValueError(f"ties must be 'reference' or 'stable', got {ties!r}")
    filled = np.cumsum(c[order])
    k = int(np.argmax(filled >= 1.0))  # first domain whose cap reaches the total
    w = np.zeros_like(e)
    w[order[:k]] = c[order[:k]]
    w[order[k]] = 1.0 - (filled[k - 1] if k > 0 else 0.0)
    return w


def l2(estimate: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``estimate`` onto the capped simplex (exact)."""
    e, c = _check(estimate, caps)
    d = e.size
    # f(t) = sum clip(e + t, 0, c) is piecewise linear and non-decreasing in t; its
    # slope rises by 1 at t = -e_i and falls by 1 at t = c_i - e_i.
    points = np.concatenate([-e, c - e])
    steps = np.concatenate([np.ones(d), -np.ones(d)])
    order = np.argsort(points, kind="stable")
    p = points[order]
    slope = np.cumsum(steps[order])  # slope on [p_j, p_{j+1}]
    f = np.zeros(2 * d)
    f[1:] = np.cumsum(slope[:-1] * np.diff(p))  # f(p_0) = 0 since p_0 = -max(e)
    j = int(np.searchsorted(f, 1.0, side="left")) - 1  # f(p_j) < 1 <= f(p_{j+1})
    j = max(j, 0)
    t = p[j] + (1.0 - f[j]) / slope[j] if slope[j] > 0 else p[j]
    # Refine t from the active set to avoid accumulated rounding in f.
    w = np.clip(e + t, 0.0, c)
    free = (e + t > 0) & (e + t < c)
    if free.any():
        t = (1.0 - c[(e + t) >= c].sum() - e[free].sum()) / free.sum()
        w = np.clip(e + t, 0.0, c)
    return w


def project(
    estimate: np.ndarray,
    caps: np.ndarray,
    *,
    method: ProjectionName,
    ties: Literal["reference", "stable"] = "reference",
) -> np.ndarray:
    """Sampling weights over domains: ``linear`` (rank-only) or ``l2`` (value-aware)."""
    if method == "linear":
        return linear(estimate, caps, ties=ties)
    if method == "l2":
        return l2(estimate, caps)
    raise ValueError(f"unknown projection {method!r}; expected 'linear' or 'l2'")
