"""Turn a mixture plan into how many times each document is included, and in which phase.

``plan_sampling`` fixes, per source and phase, the tokens to draw: ``weight * phase fraction *
budget``, clipped so that no source is read more than ``max_epochs`` times (a clipped source is
flagged and its shortfall recorded; the plan's realised weights say what the release really
holds). ``sample_source`` then picks documents for one source from its ids and token counts
only, so a release can stream source by source without holding any text:

1. ``E = target tokens / tokens available``; every document is included ``floor(E)`` times;
2. the remaining ``target - floor(E) * available`` tokens are filled with one more copy of the
   documents first in a seeded pseudo-random priority order (a hash of seed, source and id),
   taking a document while the midpoint of its tokens falls below the target, so the total is
   within half a document of the target and each document gets ``floor(E)`` or ``floor(E) + 1``
   copies (its expected count is ``E`` up to that rounding);
3. the copies are spread over the phases by a second seeded priority over (document, copy), in
   the same midpoint rule against the phases' cumulative targets.

The priorities hash the document id (stable across runs, shard layouts and library versions),
never Python's or Polars' hash; the same inputs and seed give byte-identical plans and samples.
Cost: a few vectorised NumPy passes over the source's (id, n_tokens) columns.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from planning.mixture import MixturePlan, _caps, token_counts

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    z = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return z ^ (z >> np.uint64(31))


def _salt(*parts: object) -> np.uint64:
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(h, "little"))


def id_keys(ids: Sequence[str] | pl.Series | np.ndarray) -> np.ndarray:
    """64-bit keys of document ids: the first 16 hex digits for the lake's 32-hex ids (vectorised),
    blake2b of the id for anything else."""
    s = ids if isinstance(ids, pl.Series) else pl.Series("id", list(ids), dtype=pl.String)
    s = s.cast(pl.String)
    if s.null_count():
        raise ValueError("document ids must not be null")
    hi = s.str.slice(0, 8).str.to_integer(base=16, strict=False)
    lo = s.str.slice(8, 8).str.to_integer(base=16, strict=False)
    hexlike = s.str.contains(r"^[0-9a-fA-F]{16}") & hi.is_not_null() & lo.is_not_null()
    keys = np.zeros(len(s), dtype=np.uint64)
    mask = hexlike.to_numpy()
    if mask.any():
        keys[mask] = (hi.filter(hexlike).to_numpy().astype(np.uint64) << np.uint64(32)) | \
            lo.filter(hexlike).to_numpy().astype(np.uint64)
    if (~mask).any():
        other = s.filter(~hexlike).to_list()
        keys[~mask] = np.array([int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
                                for v in other], dtype=np.uint64)
    return keys


def priorities(ids: Sequence[str] | pl.Series | np.ndarray, seed: int, *salt: object) -> np.ndarray:
    """Seeded uint64 priorities of documents (lower comes first); stable for a given id."""
    return _splitmix64(id_keys(ids) ^ _salt(seed, *salt))


@dataclass(frozen=True)
class SourceQuota:
    """What one source contributes: per-phase token targets and the implied epochs."""

    source: str
    tokens_available: float
    rows: int | None
    phase_targets: tuple[float, ...]
    capped: bool
    shortfall: float

    @property
    def target(self) -> float:
        return float(sum(self.phase_targets))

    @property
    def epochs(self) -> float:
        return self.target / self.tokens_available if self.tokens_available > 0 else 0.0


@dataclass(frozen=True)
class SamplingPlan:
    """Per-source, per-phase token targets with the seed that picks the documents."""

    seed: int
    budget: float
    phases: tuple[tuple[str, float, float], ...]  # (name, start, end) fractions of the budget
    quotas: dict[str, SourceQuota]
    max_epochs: dict[str, float]

    @property
    def realised_weights(self) -> dict[str, float]:
        tot = sum(q.target for q in self.quotas.values())
        return {s: (q.target / tot if tot else 0.0) for s, q in self.quotas.items()}

    def to_frame(self) -> pl.DataFrame:
        rows = []
        for s, q in self.quotas.items():
            for (name, _, _), t in zip(self.phases, q.phase_targets):
                rows.append({"source": s, "phase": name, "tokens_target": t, "tokens_available": q.tokens_available,
                             "epochs": t / q.tokens_available if q.tokens_available else 0.0, "capped": q.capped})
        return pl.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "budget": self.budget,
                "phases": [{"name": n, "start": a, "end": b} for n, a, b in self.phases],
                "max_epochs": {s: (None if math.isinf(v) else v) for s, v in self.max_epochs.items()},
                "realised_weights": self.realised_weights,
                "sources": {s: {"tokens_available": q.tokens_available, "rows": q.rows,
                                "phase_targets": list(q.phase_targets), "target": q.target, "epochs": q.epochs,
                                "capped": q.capped, "shortfall": q.shortfall} for s, q in self.quotas.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)


def plan_sampling(plan: MixturePlan, tokens: Mapping[str, float] | pl.DataFrame | None = None, *,
                  rows: Mapping[str, int] | None = None, budget: float | None = None,
                  max_epochs: float | Mapping[str, float] | None = None, seed: int = 0) -> SamplingPlan:
    """Token targets per source and phase for ``plan``.

    ``tokens``: the tokens actually available per source (default: the plan's). ``budget``:
    default the plan's. ``max_epochs``: cap on passes over each source (default: none); a source
    whose plan asks for more is clipped to ``cap * available`` (all its phases scaled alike).
    """
    avail = token_counts(tokens) if tokens is not None else dict(plan.tokens)
    unknown = [s for s in plan.sources if s not in avail]
    if unknown:
        raise ValueError(f"no token counts for planned sources {unknown}")
    budget_ = float(budget if budget is not None else plan.budget)
    if not budget_ > 0:
        raise ValueError("budget must be > 0")
    caps = _caps(plan.sources, max_epochs)
    quotas: dict[str, SourceQuota] = {}
    for s in plan.sources:
        targets = [p.weights.get(s, 0.0) * p.fraction * budget_ for p in plan.phases]
        want = sum(targets)
        have = avail[s]
        if want > 0 and have <= 0:
            raise ValueError(f"source {s!r} has no tokens but the plan gives it weight {plan.weights[s]:.4g}")
        cap = caps[s] * have
        capped = want > cap * (1 + 1e-12)
        if capped:
            targets = [t * cap / want for t in targets]
        quotas[s] = SourceQuota(s, have, None if rows is None else int(rows.get(s, 0)), tuple(targets), capped,
                                max(0.0, want - sum(targets)))
    return SamplingPlan(seed, budget_, tuple((p.name, p.start, p.end) for p in plan.phases), quotas, caps)


def _midpoint_take(tokens_sorted: np.ndarray, target: float) -> int:
    """How many items, in order, to take so that the total lands nearest ``target``: an item is
    taken while the midpoint of its token span lies below the target."""
    if target <= 0 or len(tokens_sorted) == 0:
        return 0
    c = np.cumsum(tokens_sorted, dtype=np.float64)
    mid = c - tokens_sorted / 2.0
    return int(np.searchsorted(mid, target, side="left"))


def sample_source(plan: SamplingPlan, source: str, ids: Sequence[str] | pl.Series | np.ndarray,
                  n_tokens: Sequence[int] | np.ndarray | pl.Series) -> pl.DataFrame:
    """The copies of one source's documents that the release includes.

    ``ids`` and ``n_tokens`` list the source's documents in release-input order (any fixed
    order; the choice depends on ids, not on positions). Returns one row per included copy,
    sorted by (phase, row, copy): ``row`` (index into the inputs), ``copy`` (0, 1, ...),
    ``phase`` (index into ``plan.phases``) and ``n_tokens``.
    """
    q = plan.quotas.get(source)
    if q is None:
        raise KeyError(f"source {source!r} is not in the sampling plan")
    nt = np.asarray(n_tokens.to_numpy() if isinstance(n_tokens, pl.Series) else n_tokens, dtype=np.int64)
    n = len(nt)
    if len(ids) != n:
        raise ValueError("ids and n_tokens differ in length")
    empty = pl.DataFrame({"row": [], "copy": [], "phase": [], "n_tokens": []},
                         schema={"row": pl.Int64, "copy": pl.Int32, "phase": pl.Int8, "n_tokens": pl.Int64})
    total = float(nt.sum())
    if n == 0 or q.target <= 0 or total <= 0:
        return empty
    epochs = q.target / total
    full = int(math.floor(epochs + 1e-12))
    rest = q.target - full * total
    pri = priorities(ids, plan.seed, "extra", source)
    order = np.lexsort((np.arange(n), pri))
    take = _midpoint_take(nt[order].astype(np.float64), rest)
    counts = np.full(n, full, dtype=np.int64)
    counts[order[:take]] += 1
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    copy = (np.arange(len(rows), dtype=np.int64) - starts).astype(np.int32)
    # phase: a second priority over (document, copy), cut at the cumulative phase targets
    phase = np.zeros(len(rows), dtype=np.int8)
    if len(plan.phases) > 1 and len(rows):
        key = _splitmix64(pri[rows] ^ _splitmix64(copy.astype(np.uint64) + _salt(plan.seed, "phase", source)))
        o2 = np.lexsort((copy, rows, key))
        tok = nt[rows[o2]].astype(np.float64)
        mid = np.cumsum(tok) - tok / 2.0
        bounds = np.cumsum(q.phase_targets)[:-1]
        phase[o2] = np.searchsorted(bounds, mid, side="right").astype(np.int8)
    out = pl.DataFrame({"row": rows, "copy": copy, "phase": phase, "n_tokens": nt[rows]},
                       schema={"row": pl.Int64, "copy": pl.Int32, "phase": pl.Int8, "n_tokens": pl.Int64})
    return out.sort(["phase", "row", "copy"])


def phase_boundaries(plan: SamplingPlan, samples: Iterable[pl.DataFrame]) -> list[dict[str, Any]]:
    """Where each phase starts and ends in a release that writes phase 0 first, then phase 1...

    ``samples``: the frames of ``sample_source`` (all sources). Returns, per phase, its name,
    ``start_row``/``end_row`` and ``start_token``/``end_token`` (end exclusive), the numbers the
    manifest records.
    """
    k = len(plan.phases)
    n_rows = np.zeros(k, dtype=np.int64)
    n_tok = np.zeros(k, dtype=np.int64)
    for df in samples:
        if df.height == 0:
            continue
        agg = df.group_by("phase").agg(pl.len().alias("n"), pl.col("n_tokens").sum().alias("t"))
        for p, nr, t in agg.iter_rows():
            n_rows[int(p)] += int(nr)
            n_tok[int(p)] += int(t)
    out, r0, t0 = [], 0, 0
    for i, (name, a, b) in enumerate(plan.phases):
        out.append({"phase": name, "start_fraction": a, "end_fraction": b, "start_row": r0, "end_row": r0 + int(n_rows[i]),
                    "start_token": t0, "end_token": t0 + int(n_tok[i])})
        r0 += int(n_rows[i])
        t0 += int(n_tok[i])
    return out
