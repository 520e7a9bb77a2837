"""Executors: run a stage over many shards, or any picklable function over many items.

``LocalExecutor`` uses a process pool (``workers`` processes, spawn start method, so it is safe
next to Prefect's threads). Each worker keeps the stages it has set up, so a model is loaded
once per worker, not per shard or batch. Memory per worker is bounded by one batch of
``batch_rows`` documents plus the stage's own state: shards are streamed, never loaded whole.

The contract an executor offers (so a Ray executor can slot in without touching stages):

- ``run_stage(name, stage, tasks)`` -> one ``ShardResult`` per task, skipping tasks whose
  output already exists (outputs are written atomically, so existing means complete);
- ``map(fn, items)`` -> results of a module-level function over items, in completion order;
- ``fit(stage, tasks, artifact_dir)`` -> the metrics of a global stage's fit over those shards;
  ``fit_incremental(stage, previous_dir, tasks, earlier, artifact_dir)`` adds new shards to a fit.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engines import storage
from engines.stage import GlobalStage, Stage, StageContext
from schemas.config import ExecutorConfig
from schemas.documents import DOCUMENT, annotation_schema

ERROR_COLUMN = "_error"


@dataclass(frozen=True)
class ShardTask:
    """Annotate one raw shard. ``inputs`` feeds columns from earlier stages' annotations:
    (column name seen by the stage, annotation file aligned with the shard, column in that file).
    Several entries for one column are a chain of derived text (engines/derived_text.py), resolved
    with coalesce in the order given; an entry with an empty path names the shard's own column."""

    source: str
    raw_path: str
    out_path: str
    inputs: tuple[tuple[str, str, str], ...] = ()


@dataclass
class ShardResult:
    task: ShardTask
    status: str  # computed | skipped | failed
    rows: int = 0
    row_errors: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class _WorkerState:
    stages: dict[str, Stage] = field(default_factory=dict)


_STATE = _WorkerState()


def _ready_stage(stage: Stage, key: str, ctx: StageContext) -> Stage:
    """The worker's set-up copy of this stage (``setup`` runs once per worker, key and artifact:
    a global stage refitted in the same process must not reuse the old artifact)."""
    cache_key = f"{key}|{ctx.artifact_dir}"
    ready = _STATE.stages.get(cache_key)
    if ready is None:
        stage.setup(ctx)
        _STATE.stages[cache_key] = stage
        ready = stage
    return ready


def _check_output(stage: Stage, out: pl.DataFrame, n: int) -> None:
    if out.height != n:
        raise ValueError(f"stage {stage.kind} returned {out.height} rows for a batch of {n}")
    missing = set(stage.writes()) - set(out.columns)
    if missing:
        raise ValueError(f"stage {stage.kind} did not return columns {sorted(missing)}")


def _transform_safely(stage: Stage, batch: pl.DataFrame) -> tuple[pl.DataFrame, list[str | None]]:
    """Run the stage on a batch; if the batch fails, retry row by row so one bad document only
    costs its own row (null annotations plus the error), never the shard."""
    try:
        out = stage.transform(batch)
        _check_output(stage, out, batch.height)
        return out.select(list(stage.writes())), [None] * batch.height
    except Exception:  # noqa: BLE001 - any stage bug or bad row; isolated below
        pass
    parts: list[pl.DataFrame] = []
    errors: list[str | None] = []
    schema: dict[str, Any] = {k: pl.Series(k, pa.array([], type=v)).dtype for k, v in stage.writes().items()}
    for i in range(batch.height):
        try:
            out = stage.transform(batch.slice(i, 1))
            _check_output(stage, out, 1)
            parts.append(out.select(list(schema)).cast(schema))  # type: ignore[arg-type]
            errors.append(None)
        except Exception as e:  # noqa: BLE001
            parts.append(pl.DataFrame({k: [None] for k in schema}, schema=schema))
            errors.append(f"{type(e).__name__}: {e}"[:2000])
    return pl.concat(parts, how="vertical_relaxed"), errors


def _to_arrow(out: pl.DataFrame, ids: pa.Array, errors: list[str | None], schema: pa.Schema) -> pa.Table:
    cols = [ids]
    for f in schema:
        if f.name in ("id", ERROR_COLUMN):
            continue
        cols.append(out.get_column(f.name).to_arrow().cast(f.type))
    cols.append(pa.array(errors, type=pa.string()))
    return pa.Table.from_arrays(cols, schema=schema)


def output_schema(stage: Stage) -> pa.Schema:
    return annotation_schema({**stage.writes(), ERROR_COLUMN: pa.string()})


class _ColumnStream:
    """One column of a Parquet file handed out in slices of any length, reading a row group's
    worth at a time (so a fed column never sits in memory whole)."""

    def __init__(self, f: Any, column: str, batch_rows: int):
        self._it = pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=[column])
        self._cur: pa.Array | None = None
        self._off = 0

    def take(self, n: int) -> pa.Array:
        parts: list[pa.Array] = []
        while n:
            if self._cur is None or self._off == len(self._cur):
                rb = next(self._it, None)
                if rb is None:
                    raise ValueError("a fed annotation file has fewer rows than its raw shard")
                self._cur, self._off = rb.column(0), 0
            k = min(n, len(self._cur) - self._off)
            parts.append(self._cur.slice(self._off, k))
            self._off += k
            n -= k
        if len(parts) == 1:
            return parts[0]
        return pa.concat_arrays(parts) if parts else pa.array([])


def shard_batches(stage: Stage, task: ShardTask, batch_rows: int) -> Iterator[tuple[pa.Array, pl.DataFrame]]:
    """Stream one shard as (ids, batch) pairs: the document columns the stage needs, plus the
    columns fed from earlier stages' annotation files, read alongside in step with the shard."""
    fed = {alias for alias, _, _ in task.inputs}
    own = {column for _, path, column in task.inputs if not path}  # chain fallbacks to the shard's columns
    doc_cols = ["id"] + [c for c in stage.needs if c != "id" and c not in fed and c in DOCUMENT.names]
    doc_cols += sorted(own - set(doc_cols))
    with contextlib.ExitStack() as stack:
        side: dict[str, list[_ColumnStream | str]] = {}
        for alias, path, column in task.inputs:
            if path:
                fs, p = storage.fs_and_path(path)
                side.setdefault(alias, []).append(_ColumnStream(stack.enter_context(fs.open(p, "rb")), column, batch_rows))
            else:
                side.setdefault(alias, []).append(column)
        fs, raw = storage.fs_and_path(task.raw_path)
        fh = stack.enter_context(fs.open(raw, "rb"))
        for rb in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows, columns=doc_cols):
            batch = pl.from_arrow(pa.Table.from_batches([rb]))
            assert isinstance(batch, pl.DataFrame)
            if side:
                batch = batch.with_columns([_fed_column(alias, parts, batch, rb.num_rows) for alias, parts in side.items()])
            yield rb.column("id"), batch


def _fed_column(alias: str, parts: list[_ColumnStream | str], batch: pl.DataFrame, n: int) -> pl.Series:
    """One fed column: a single source, or the coalesce of a derived-text chain (first non-null wins)."""
    cols = [batch.get_column(p) if isinstance(p, str) else pl.Series(p.take(n)) for p in parts]
    if len(cols) == 1:
        return cols[0].alias(alias)
    frame = pl.DataFrame({f"_{i}": c for i, c in enumerate(cols)})
    return frame.select(pl.coalesce(pl.all()).alias(alias)).to_series()


def run_shard(stage: Stage, key: str, task: ShardTask, ctx: StageContext, batch_rows: int) -> ShardResult:
    """Annotate one shard (in whichever process calls it). Writes ``task.out_path`` atomically."""
    t0 = time.perf_counter()
    done_rows = storage.complete_parquet_rows(task.out_path)
    if done_rows is not None:
        return ShardResult(task, "skipped", rows=done_rows)
    try:
        ready = _ready_stage(stage, key, ctx)
        schema = output_schema(ready)
        rows = row_errors = 0
        with storage.atomic_path(task.out_path) as tmp:
            writer = storage.parquet_writer(tmp, schema)
            for ids, batch in shard_batches(ready, task, batch_rows):
                out, errors = _transform_safely(ready, batch)
                writer.write_table(_to_arrow(out, ids, errors, schema))
                rows += batch.height
                row_errors += sum(e is not None for e in errors)
            writer.close()
        return ShardResult(task, "computed", rows=rows, row_errors=row_errors, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a shard that cannot be processed is reported, not fatal
        return ShardResult(task, "failed", seconds=time.perf_counter() - t0,
                           error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")


def _progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=transient,
    )


class LocalExecutor:
    """Process pool on this machine. ``workers=1`` runs everything in this process (debuggable)."""

    def __init__(self, config: ExecutorConfig | None = None, show_progress: bool = True):
        self.config = config or ExecutorConfig()
        self.workers = max(1, self.config.workers or os.cpu_count() or 1)
        self.show_progress = show_progress
        self._pool: ProcessPoolExecutor | None = None

    # The pool lives as long as the executor, so workers keep their set-up stages across shards.
    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, fn: Callable[..., Any], items: list[Any], desc: str = "working") -> Iterator[Any]:
        """``fn(item)`` for each item, yielded in completion order, at most ``workers`` at once."""
        with _progress() if self.show_progress else _NullProgress() as prog:
            bar: Any = prog.add_task(desc, total=len(items))
            if self.workers == 1 or len(items) <= 1:
                for it in items:
                    yield fn(it)
                    prog.advance(bar)
                return
            pool = self._get_pool()
            pending: set[Future] = set()
            queue = list(reversed(items))
            # Bounded submission: never more than 2x workers in flight, so results stay small.
            while queue or pending:
                while queue and len(pending) < 2 * self.workers:
                    pending.add(pool.submit(fn, queue.pop()))
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    prog.advance(bar)

    def run_stage(self, name: str, stage: Stage, tasks: list[ShardTask],
                  ctx: StageContext | None = None) -> list[ShardResult]:
        ctx = ctx or StageContext()
        key = stage.key(name)
        done = {t: storage.complete_parquet_rows(t.out_path) for t in tasks}  # a damaged output is redone
        todo = [t for t in tasks if done[t] is None]
        results = [ShardResult(t, "skipped", rows=n) for t, n in done.items() if n is not None]
        runner = _ShardRunner(stage, key, ctx, self.config.batch_rows)
        results.extend(self.map(runner, todo, desc=f"{name} ({len(todo)} shards)"))
        return sorted(results, key=lambda r: r.task.raw_path)

    def fit(self, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str) -> dict[str, Any]:
        """Stream every shard of ``tasks`` (in order, with their fed columns) through ``stage.fit``.
        Runs in this process: a fit is one pass that a stage may parallelise inside (Polars does)."""
        batches = (batch for t in tasks for _, batch in shard_batches(stage, t, self.config.batch_rows))
        return stage.fit(batches, artifact_dir)

    def fit_incremental(self, stage: GlobalStage, previous_dir: str, tasks: list[ShardTask],
                        earlier: list[ShardTask], artifact_dir: str) -> dict[str, Any]:
        """Stream the new shards of ``tasks`` through ``stage.fit_incremental`` on top of the
        artifact in ``previous_dir`` (fitted over the ``earlier`` shards, which it may read back)."""
        from engines.earlier_rows import ShardRows
        batches = (batch for t in tasks for _, batch in shard_batches(stage, t, self.config.batch_rows))
        return stage.fit_incremental(previous_dir, batches, artifact_dir, ShardRows([t.raw_path for t in earlier]))


@dataclass
class _ShardRunner:
    """Picklable callable shipping one stage to the workers."""

    stage: Stage
    key: str
    ctx: StageContext
    batch_rows: int

    def __call__(self, task: ShardTask) -> ShardResult:
        return run_shard(self.stage, self.key, task, self.ctx, self.batch_rows)


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> Any:
        return 0

    def advance(self, *a: Any, **k: Any) -> None:
        return None


def make_executor(config: ExecutorConfig, show_progress: bool = True) -> LocalExecutor:
    """The executor named by ``executor.kind`` in the pipeline file."""
    if config.kind == "local":
        return LocalExecutor(config, show_progress=show_progress)
    raise ValueError(f"unknown executor kind {config.kind!r}; available: local")
