"""Curriculum orderings: the order in which a release's rows reach the trainer.

Every ordering takes a Polars frame with a difficulty column (any numeric annotation:
``difficulty.compression_ratio``, ``difficulty.mtld``, ``difficulty.flesch_reading_ease``, a
perplexity stage's bits per byte, a quality score...) and a seed, and returns a permutation of
row indices (``np.ndarray`` of int64): ``df[perm]`` is the training order. "Easy first" means
ascending values unless ``descending=True`` (use that for signals where higher is easier, e.g.
Flesch reading ease). Rows whose signal is null count as the hardest.

- ``order_random``: a seeded shuffle.
- ``order_ascending`` / ``order_descending``: sorted by the signal; ties (including repeated
  copies of one document) are broken by a seeded shuffle, so they are not in input order.
- ``order_folding``: sort easy to hard, deal the sorted rows round-robin into ``folds`` [3]
  folds, and concatenate the folds: the difficulty climbs from easy to hard ``folds`` times,
  each fold a spread sample of the whole range (copies of one document land in different folds).
- ``order_pacing``: at progress t of the release, only the easiest g(t) share of rows is
  available; positions are filled block by block (``steps`` [100] blocks) by seeded draws among
  the rows released so far and not yet used. g(t) = start + (1 - start) * h(t) with h = t
  (``linear``), t**2 (``quadratic``), 1 - (1 - t)**2 (``inverse_quadratic``) or sqrt(t)
  (``root``); ``start`` [0.1].
- ``order_warmup``: the first ``warmup_fraction`` [0.1] of positions take the easiest rows in
  ascending order, the rest follow in a seeded random order.
- ``order_release``: a frame with a ``phase`` column (from ``planning.sampling``): phase 0 rows
  first, ordered by the curriculum, then each later phase (an annealing phase) ordered by its
  own ordering (random by default); returns the permutation and the phase boundaries.

All orderings are deterministic given (values, seed) and vectorised (sorts, NumPy blocks).
"""
from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

Schedule = Literal["linear", "quadratic", "inverse_quadratic", "root"]


def _rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, zlib.crc32(salt.encode())])


def _values(df: pl.DataFrame, column: str, descending: bool) -> np.ndarray:
    """The signal as float64, oriented so that smaller is easier; null/NaN become +inf (hardest)."""
    if column not in df.columns:
        raise KeyError(f"difficulty column {column!r} not in frame (columns: {df.columns})")
    s = df.get_column(column)
    if not (s.dtype.is_numeric() or s.dtype == pl.Boolean):
        raise TypeError(f"difficulty column {column!r} must be numeric, got {s.dtype}")
    v = s.cast(pl.Float64).fill_nan(None).to_numpy().astype(np.float64, copy=True)
    v = np.where(np.isnan(v), np.nan, -v if descending else v)
    return np.where(np.isnan(v), np.inf, v)


def _easy_to_hard(df: pl.DataFrame, column: str, descending: bool, seed: int) -> np.ndarray:
    v = _values(df, column, descending)
    tie = _rng(seed, "tie").permutation(len(v))
    return np.lexsort((tie, v)).astype(np.int64)


def order_random(df: pl.DataFrame | int, seed: int = 0) -> np.ndarray:
    """A seeded random permutation of the rows (or of ``range(n)``)."""
    n = df if isinstance(df, int) else df.height
    return _rng(seed, "random").permutation(n).astype(np.int64)


def order_ascending(df: pl.DataFrame, column: str, seed: int = 0) -> np.ndarray:
    """Rows by increasing ``column`` (nulls last), ties in seeded random order."""
    return _easy_to_hard(df, column, False, seed)


def order_descending(df: pl.DataFrame, column: str, seed: int = 0) -> np.ndarray:
    """Rows by decreasing ``column`` (nulls last), ties in seeded random order."""
    return _easy_to_hard(df, column, True, seed)


def order_folding(df: pl.DataFrame, column: str, folds: int = 3, seed: int = 0, descending: bool = False) -> np.ndarray:
    """Sort easy to hard, deal round-robin into ``folds`` folds, concatenate the folds."""
    if folds < 1:
        raise ValueError("folds must be >= 1")
    s = _easy_to_hard(df, column, descending, seed)
    return np.concatenate([s[j::folds] for j in range(folds)]).astype(np.int64)


def pacing(t: np.ndarray | float, schedule: Schedule = "linear", start: float = 0.1) -> np.ndarray:
    """Share of the data (easiest first) available at progress ``t`` in [0, 1]."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    if schedule == "linear":
        h = t
    elif schedule == "quadratic":
        h = t ** 2
    elif schedule == "inverse_quadratic":
        h = 1.0 - (1.0 - t) ** 2
    elif schedule == "root":
        h = np.sqrt(t)
    else:
        raise ValueError(f"unknown pacing schedule {schedule!r}")
    return start + (1.0 - start) * h


def pacing_blocks(n: int, schedule: Schedule = "linear", start: float = 0.1, steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Block ends (positions) and how many of the easiest rows are released at each block start.

    Block k covers positions [ends[k-1], ends[k]) and draws from the ``released[k]`` easiest
    rows; ``released[k]`` is at least ``ends[k]``, so a block can always be filled.
    """
    steps = max(1, min(steps, n)) if n else 1
    ends = np.round(np.linspace(0, n, steps + 1)[1:]).astype(np.int64)
    t0 = np.arange(steps, dtype=np.float64) / steps
    released = np.ceil(pacing(t0, schedule, start) * n - 1e-9).astype(np.int64)
    released = np.minimum(np.maximum(released, ends), n)
    return ends, released


def order_pacing(df: pl.DataFrame, column: str, schedule: Schedule = "linear", start: float = 0.1, steps: int = 100,
                 seed: int = 0, descending: bool = False) -> np.ndarray:
    """Difficulty released by a pacing schedule; seeded uniform draws among released, unused rows."""
    if not 0 < start <= 1:
        raise ValueError("start must be in (0, 1]")
    ranked = _easy_to_hard(df, column, descending, seed)
    n = len(ranked)
    if n == 0:
        return ranked
    rng = _rng(seed, "pacing")
    ends, released = pacing_blocks(n, schedule, start, steps)
    out = np.empty(n, dtype=np.int64)
    pool = np.empty(0, dtype=np.int64)  # ranks released and not used yet
    have, pos = 0, 0
    for end, rel in zip(ends, released):
        if rel > have:
            pool = np.concatenate([pool, np.arange(have, rel, dtype=np.int64)])
            have = int(rel)
        m = int(end) - pos
        if m <= 0:
            continue
        pick = rng.permutation(len(pool))
        out[pos:end] = ranked[pool[pick[:m]]]
        pool = pool[pick[m:]]
        pos = int(end)
    return out


def order_warmup(df: pl.DataFrame, column: str, warmup_fraction: float = 0.1, seed: int = 0,
                 descending: bool = False) -> np.ndarray:
    """Easiest rows first (ascending) for the warm-up share of positions, then a seeded shuffle."""
    if not 0 <= warmup_fraction <= 1:
        raise ValueError("warmup_fraction must be in [0, 1]")
    s = _easy_to_hard(df, column, descending, seed)
    k = int(round(warmup_fraction * len(s)))
    rest = s[k:]
    return np.concatenate([s[:k], rest[_rng(seed, "warmup").permutation(len(rest))]]).astype(np.int64)


class CurriculumConfig(BaseModel):
    """How a release (or one of its phases) is ordered.

    ``kind``: random | ascending | descending | folding | pacing | warmup. ``column``: the
    difficulty signal (required except for random). ``descending``: treat high values as easy
    (folding, pacing, warmup).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["random", "ascending", "descending", "folding", "pacing", "warmup"] = "random"
    column: str | None = None
    descending: bool = False
    folds: int = Field(default=3, ge=1)
    schedule: Schedule = "linear"
    start: float = Field(default=0.1, gt=0, le=1)
    steps: int = Field(default=100, ge=1)
    warmup_fraction: float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _needs_column(self) -> CurriculumConfig:
        if self.kind != "random" and not self.column:
            raise ValueError(f"curriculum kind {self.kind!r} needs a difficulty column")
        return self


def order_frame(df: pl.DataFrame, cfg: CurriculumConfig | dict, seed: int = 0) -> np.ndarray:
    """The permutation that ``cfg`` gives for ``df``."""
    if not isinstance(cfg, CurriculumConfig):
        cfg = CurriculumConfig.model_validate(cfg)
    if cfg.kind == "random":
        return order_random(df, seed)
    assert cfg.column is not None
    if cfg.kind == "ascending":
        return order_ascending(df, cfg.column, seed)
    if cfg.kind == "descending":
        return order_descending(df, cfg.column, seed)
    if cfg.kind == "folding":
        return order_folding(df, cfg.column, cfg.folds, seed, cfg.descending)
    if cfg.kind == "pacing":
        return order_pacing(df, cfg.column, cfg.schedule, cfg.start, cfg.steps, seed, cfg.descending)
    return order_warmup(df, cfg.column, cfg.warmup_fraction, seed, cfg.descending)


def order_release(df: pl.DataFrame, curriculum: CurriculumConfig | dict, seed: int = 0,
                  anneal: CurriculumConfig | dict | None = None, phase_column: str = "phase") -> tuple[np.ndarray, list[int]]:
    """Order a release's sampled rows: phase by phase, the first by ``curriculum``, later ones by
    ``anneal`` (default: random). Without a phase column the whole frame is one phase.

    Returns ``(perm, starts)``: ``df[perm]`` is the training order and ``starts[p]`` the first
    position of phase ``p`` (``starts[0] == 0``).
    """
    if phase_column not in df.columns:
        return order_frame(df, curriculum, seed), [0]
    ph = df.get_column(phase_column).cast(pl.Int64).to_numpy()
    if len(ph) and ph.min() < 0:
        raise ValueError("phase indices must be >= 0")
    parts, starts, pos = [], [], 0
    for p in range(int(ph.max()) + 1 if len(ph) else 1):
        idx = np.flatnonzero(ph == p)
        cfg = curriculum if p == 0 else (anneal if anneal is not None else CurriculumConfig(kind="random"))
        sub = df[idx] if len(idx) else df.clear()
        perm = order_frame(sub, cfg, seed + p)
        parts.append(idx[perm])
        starts.append(pos)
        pos += len(idx)
    return np.concatenate(parts).astype(np.int64), starts
