"""Stages used only by tests, loaded through CURATE_PLUGINS=tests.plugins (never by users)."""
from __future__ import annotations

import time

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from engines.stage import Stage, register_stage


class SlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds_per_batch: float = 0.5


@register_stage
class SlowWordCount(Stage):
    """Counts words, slowly, so a test can kill the run while this stage is half done."""

    kind = "test_slow_words"
    Params = SlowParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"words": pa.int64()}

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        time.sleep(self.params.seconds_per_batch)
        return batch.select(pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias("words"))


class TrapParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trap: str = "Guido"


@register_stage
class Trap(Stage):
    """Raises on documents containing ``trap``: stands for a stage bug hit by a few rows."""

    kind = "test_trap"
    Params = TrapParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string()}

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        if batch.get_column("text").str.contains(self.params.trap, literal=True).any():
            raise RuntimeError(f"trap {self.params.trap!r} hit")
        return batch.select(pl.lit(True).alias("keep"), pl.lit(None, pl.String).alias("reason"))
