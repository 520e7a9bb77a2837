"""Perplexity-correlation data selection (Thrush, Potts & Hashimoto, 2024).

Estimate, per domain, how a model's bits-per-byte on that domain correlates with its
benchmark error across many public models (``estimators``), then project the estimate
onto the capped sampling simplex (``projections``) to get sampling weights.
"""

from scorers.ppl_corr.estimators import (
    ESTIMATORS,
    estimate,
    product,
    sign,
    sign_cdf,
    sign_sign,
    spearmanr,
    to_error,
)
from scorers.ppl_corr.projections import caps_from_tokens, l2, linear, project

__all__ = [
    "ESTIMATORS",
    "estimate",
    "product",
    "sign",
    "sign_cdf",
    "sign_sign",
    "spearmanr",
    "to_error",
    "caps_from_tokens",
    "l2",
    "linear",
    "project",
]
