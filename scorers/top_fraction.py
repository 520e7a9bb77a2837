"""``top_fraction``: keep the best-scoring fraction of some sources' documents (a global stage).

REWIRE kept only the rewritten documents a quality classifier ranked highest; this stage does
that for any score column (``inputs: {score: quality.score}``). The fit reads the scores of the
documents of ``rank_sources`` (default: every source the stage sees) and finds the threshold
above which ``fraction`` of them lie (by documents, or by whitespace words with ``weight:
tokens``); ``keep`` is then ``score >= threshold`` for those sources. Documents of other
sources are not ranked and keep ``keep = true``, so ``<stage>.keep`` can go straight into
``release.select``. A document without a score is dropped (``reason: no_score``) when ranked.

Ties at the threshold are all kept, so the kept share can exceed ``fraction`` by the weight of
the tied documents. The artifact (``threshold.json``) records the threshold, the share kept and
how many documents were ranked. Cost: 8 bytes per ranked document during the fit, one sort.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines import storage
from engines.stage import GlobalStage, StageContext, register_stage


class TopFractionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(default=0.1, gt=0, le=1)
    weight: Literal["docs", "tokens"] = "docs"
    # Sources whose documents are ranked (None: every source the stage sees); others keep true.
    rank_sources: list[str] | None = None
    higher_is_better: bool = True


def threshold_for(scores: np.ndarray, weights: np.ndarray, fraction: float, higher_is_better: bool = True) -> float:
    """The score t such that documents scoring at least t (at most t when lower is better) carry
    ``fraction`` of the weight, ties at t included (NaN scores never count)."""
    ok = ~np.isnan(scores)
    s, w = scores[ok], weights[ok].astype(np.float64)
    if not len(s):
        return float("nan")
    order = np.argsort(-s if higher_is_better else s, kind="stable")
    cum = np.cumsum(w[order])
    total = cum[-1]
    k = int(np.searchsorted(cum, fraction * total - 1e-9 * max(total, 1.0)))
    return float(s[order][min(k, len(s) - 1)])


@register_stage
class TopFraction(GlobalStage):
    kind = "top_fraction"
    version = "1"
    needs = ("score", "text", "source")
    Params = TopFractionParams
    source_params = ("rank_sources[]",)

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "threshold": pa.float64()}

    def _ranked(self, batch: pl.DataFrame) -> pl.Series:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        if p.rank_sources is None:
            return pl.Series([True] * batch.height, dtype=pl.Boolean)
        return batch.get_column("source").is_in(p.rank_sources)

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        scores, weights = [], []
        for b in batches:
            b = b.filter(self._ranked(b))
            scores.append(b.get_column("score").cast(pl.Float64).fill_null(float("nan")).to_numpy())
            ws = (b.get_column("text").str.count_matches(r"\S+").cast(pl.Float64) if p.weight == "tokens"
                  else pl.Series([1.0] * b.height))
            weights.append(ws.to_numpy())
        s = np.concatenate(scores) if scores else np.zeros(0)
        w: np.ndarray = np.concatenate(weights) if weights else np.zeros(0)
        t = threshold_for(s, w, p.fraction, p.higher_is_better)
        ok = ~np.isnan(s)
        kept = (s[ok] >= t) if p.higher_is_better else (s[ok] <= t)
        total = float(w[ok].sum())
        share = float(w[ok][kept].sum()) / total if total > 0 else 0.0
        metrics = {"threshold": None if np.isnan(t) else t, "ranked": int(ok.sum()), "unscored": int((~ok).sum()),
                   "kept_share": round(share, 6), "fraction": p.fraction, "weight": p.weight}
        fs, root = storage.fs_and_path(artifact_dir)
        fs.makedirs(root, exist_ok=True)
        with fs.open(f"{root}/threshold.json", "w") as f:
            json.dump(metrics, f)
        return metrics

    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir is not None
        fs, root = storage.fs_and_path(ctx.artifact_dir)
        with fs.open(f"{root}/threshold.json", "r") as f:
            t = json.load(f)["threshold"]
        self._threshold = float("nan") if t is None else float(t)

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: TopFractionParams = self.params  # type: ignore[assignment]
        t = None if np.isnan(self._threshold) else self._threshold
        df = pl.DataFrame({"s": batch.get_column("score").cast(pl.Float64).fill_nan(None), "r": self._ranked(batch)})
        s, ranked = pl.col("s"), pl.col("r")
        above = (s >= t) if p.higher_is_better else (s <= t)
        above = above.fill_null(False) if t is not None else pl.lit(False)
        return df.select(
            pl.when(~ranked).then(True).when(s.is_null()).then(False).otherwise(above).alias("keep"),
            pl.when(~ranked).then(None).when(s.is_null()).then(pl.lit("no_score"))
            .when(~above).then(pl.lit("below_top_fraction")).otherwise(None).cast(pl.String).alias("reason"),
            pl.when(ranked).then(pl.lit(t, pl.Float64)).otherwise(None).alias("threshold"))
