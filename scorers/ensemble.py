"""``score_ensemble``: combine several scorers' buckets (or scores) into one, by max or mean.

Nemotron-CC style: each quality classifier assigns a byte-weighted percentile bucket; an
ensemble takes, per document, the ``max`` (a document good by any classifier is kept) or the
``mean`` of those buckets. ``inputs`` in the stage config names the columns, e.g.
``inputs: {a: quality.bucket, b: distilled.bucket}``; the stage reads them in that order.
Writes ``bucket`` (float64: a mean may be fractional; null when every input is null) and, with
``min_bucket``, ``keep``/``reason`` ("ensemble_below_min_bucket"). Cost: negligible.
"""
from __future__ import annotations

from typing import Any, Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import Stage, register_stage


class EnsembleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: list[str] = Field(min_length=2)  # the aliases given in the stage's `inputs`
    combine: Literal["max", "mean"] = "max"
    min_bucket: float | None = None


@register_stage
class ScoreEnsemble(Stage):
    kind = "score_ensemble"
    version = "1"
    Params = EnsembleParams

    def __init__(self, params: Any = None, upstream: dict[str, str] | None = None):
        super().__init__(params, upstream)
        self.needs = tuple(self.params.columns)  # type: ignore[attr-defined,misc]

    def writes(self) -> dict[str, pa.DataType]:
        cols = {"bucket": pa.float64()}
        if self.params.min_bucket is not None:  # type: ignore[attr-defined]
            cols.update({"keep": pa.bool_(), "reason": pa.string()})
        return cols

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        p: EnsembleParams = self.params  # type: ignore[assignment]
        cols = [pl.col(c).cast(pl.Float64) for c in p.columns]
        combined = pl.max_horizontal(cols) if p.combine == "max" else pl.mean_horizontal(cols)
        out = batch.select(combined.alias("bucket"))
        if p.min_bucket is not None:
            keep = out.get_column("bucket").fill_null(float("-inf")) >= p.min_bucket
            out = out.with_columns(keep.alias("keep"),
                                   pl.when(keep).then(None).otherwise(pl.lit("ensemble_below_min_bucket")).alias("reason"))
        return out
