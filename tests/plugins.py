"""Stages used only by tests, loaded through CURATE_PLUGINS=tests.plugins (never by users)."""
from __future__ import annotations

import time
from pathlib import Path

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


class WhereParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds_per_batch: float = 0.0
    # A folder both nodes see (they share this machine): each node marks it, and a batch waits (up to
    # meet_seconds) until two nodes have, so neither can finish every shard before the other starts.
    meet_dir: str | None = None
    meet_seconds: float = 120.0


@register_stage
class Where(Stage):
    """Records the Ray node that annotated each row ("" outside Ray) and the worker's thread count:
    lets the two-node test see that both nodes did work. A test probe, not a pattern for stages."""

    kind = "test_where"
    Params = WhereParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"node": pa.string(), "threads": pa.int64()}

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        import sys
        time.sleep(self.params.seconds_per_batch)
        node = ""
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            node = sys.modules["ray"].get_runtime_context().get_node_id()
        if self.params.meet_dir and node:
            self._meet(Path(self.params.meet_dir), node)
        return pl.DataFrame({"node": [node] * batch.height, "threads": [self.context.threads] * batch.height},
                            schema={"node": pl.String, "threads": pl.Int64})


    def _meet(self, folder: Path, node: str) -> None:
        """Why: a warm worker on one node can take every queued shard (Ray reuses a leased worker)
        while the other node's worker is still starting on a loaded machine. Waiting here holds the
        first node's only CPU, so Ray must lease the next shard on the other node. If the executor
        never places work there, the wait times out and the test's node check fails."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / node).touch()
        deadline = time.monotonic() + self.params.meet_seconds
        while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)


class TeardownParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    log: str  # a file each setup/teardown appends a line to
    threads: int = 1  # a runtime param: excluded from the key


@register_stage
class CountsSetups(Stage):
    """Appends "setup <pid>" / "teardown <pid>" to ``log``: lets tests count model loads and teardowns."""

    kind = "test_setups"
    Params = TeardownParams
    runtime_params = ("threads",)
    stateful = True

    def writes(self) -> dict[str, pa.DataType]:
        return {"n": pa.int64()}

    def _note(self, what: str) -> None:
        import os
        with open(self.params.log, "a") as f:
            f.write(f"{what} {os.getpid()}\n")

    def setup(self, ctx) -> None:  # noqa: ANN001
        self._note("setup")

    def teardown(self) -> None:
        self._note("teardown")

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.select(pl.col("text").str.len_chars().cast(pl.Int64).alias("n"))
