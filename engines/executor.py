"""Executors: run a stage over many shards, or any picklable function over many items.

``LocalExecutor`` uses a process pool (``workers`` processes, spawn start method, so it is safe
next to Prefect's threads). Each worker keeps the stages it has set up, so a model is loaded
once per worker, not per shard or batch. Memory per worker is bounded by one batch of
``batch_rows`` documents plus the stage's own state: shards are streamed, never loaded whole.

The contract every executor offers is ``Executor`` below; ``make_executor`` picks one from
``executor.kind`` (``local`` here, ``ray`` in engines/ray_executor.py). Both run the same stage
code through ``run_shard``/``shard_batches``, so their outputs are byte-identical.
``LocalExecutor.fit_incremental`` (and the Ray executor's) adds new shards to an earlier fit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from engines import storage
from engines.faults import fault_point
from engines.stage import GlobalStage, Resources, Stage, StageContext
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


@runtime_checkable
class Executor(Protocol):
    """What the flow asks of an executor. Stages never see it: an executor adapts them (ships
    them to workers, sets them up once per worker, binds a ``StageContext``, tears them down)."""

    def map(self, fn: Callable[..., Any], items: list[Any], desc: str = "working",
            resources: Resources | None = None) -> Iterator[Any]:
        """``fn(item)`` (a picklable, module-level function) for each item, in completion order;
        each call reserves ``resources`` where the executor places work (default: one CPU)."""
        ...

    def run_stage(self, name: str, stage: Stage, tasks: list[ShardTask],
                  ctx: StageContext | None = None) -> list[ShardResult]:
        """One ``ShardResult`` per task, sorted by raw path; tasks whose output exists are skipped
        (outputs are written atomically, so existing means complete). A shard that fails is a
        ``failed`` result with its error, never an exception."""
        ...

    def fit(self, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str,
            ctx: StageContext | None = None) -> dict[str, Any]:
        """Stream the shards of ``tasks`` (in order, with their fed columns) through ``stage.fit``,
        which writes its artifact under ``artifact_dir``; returns the fit's metrics."""
        ...

    def fit_incremental(self, stage: GlobalStage, previous_dir: str, tasks: list[ShardTask],
                        earlier: list[ShardTask], artifact_dir: str) -> dict[str, Any]:
        """Stream the new shards ``tasks`` through ``stage.fit_incremental`` on top of the artifact
        in ``previous_dir`` (fitted over the ``earlier`` shards)."""
        ...

    def close(self) -> None:
        """Tear down set-up stages and release workers."""
        ...


@dataclass
class _WorkerState:
    stages: dict[str, Stage] = field(default_factory=dict)
    finalizer: Any = None


_STATE = _WorkerState()


def _ready_stage(stage: Stage, key: str, ctx: StageContext) -> Stage:
    """The worker's set-up copy of this stage (``setup`` runs once per worker, key and artifact:
    a global stage refitted in the same process must not reuse the old artifact). Stages run one
    after another, so a worker keeps one set-up stage: the previous one is torn down first."""
    cache_key = f"{key}|{ctx.artifact_dir}"
    ready = _STATE.stages.get(cache_key)
    if ready is None:
        teardown_stages()
        stage.bind(ctx)
        stage.setup(ctx)
        _STATE.stages[cache_key] = stage
        ready = stage
        if _STATE.finalizer is None and mp.parent_process() is not None:
            # A pool worker exits without atexit hooks; multiprocessing's finalizers do run.
            _STATE.finalizer = mp_util.Finalize(None, teardown_stages, exitpriority=10)
    return ready


def teardown_stages() -> None:
    """Call ``teardown`` on every stage set up in this process (errors are reported, not raised:
    a failing teardown must not lose the shards the stage wrote)."""
    while _STATE.stages:
        _, stage = _STATE.stages.popitem()
        try:
            stage.teardown()
        except Exception as e:  # noqa: BLE001
            print(f"teardown of stage {stage.kind} failed: {type(e).__name__}: {e}")


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
    """One column of an annotation file (with its ``id``) handed out in slices of any length,
    reading a row group's worth at a time (so a fed column never sits in memory whole)."""

    def __init__(self, f: Any, column: str, batch_rows: int, path: str = ""):
        cols = list(dict.fromkeys([column, "id"]))
        self._it = pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=cols)
        self._id = cols.index("id")
        self._cur: pa.RecordBatch | None = None
        self._off = 0
        self._row = 0
        self.path = path

    def take(self, ids: pa.Array) -> pa.Array:
        """The next ``len(ids)`` values; raises if the file's ids are not exactly ``ids`` (an
        annotation file must be aligned with its raw shard by id, not only by position)."""
        n = len(ids)
        parts: list[pa.RecordBatch] = []
        while n:
            if self._cur is None or self._off == self._cur.num_rows:
                rb = next(self._it, None)
                if rb is None:
                    raise ValueError(f"annotation file {self.path} has fewer rows than its raw shard")
                self._cur, self._off = rb, 0
            k = min(n, self._cur.num_rows - self._off)
            parts.append(self._cur.slice(self._off, k))
            self._off += k
            n -= k
        table = pa.Table.from_batches(parts) if parts else None
        if table is None:
            return pa.array([])
        got = table.column(self._id)
        if not got.equals(pa.chunked_array([ids], type=got.type)):
            bad = next(i for i, (a, b) in enumerate(zip(got.to_pylist(), ids.to_pylist())) if a != b)
            raise ValueError(f"annotation file {self.path} is not aligned with its raw shard: row {self._row + bad} "
                             "has another document id (delete the file to recompute it)")
        self._row += len(ids)
        return table.column(0).combine_chunks()


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
                side.setdefault(alias, []).append(_ColumnStream(stack.enter_context(fs.open(p, "rb")), column,
                                                                batch_rows, path))
            else:
                side.setdefault(alias, []).append(column)
        fs, raw = storage.fs_and_path(task.raw_path)
        fh = stack.enter_context(fs.open(raw, "rb"))
        for rb in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows, columns=doc_cols):
            batch = pl.from_arrow(pa.Table.from_batches([rb]))
            assert isinstance(batch, pl.DataFrame)
            if side:
                batch = batch.with_columns([_fed_column(alias, parts, batch, rb.column("id"))
                                            for alias, parts in side.items()])
            yield rb.column("id"), batch


def _shard_frames(stage: Stage, task: ShardTask, batch_rows: int) -> Iterator[pl.DataFrame]:
    """One shard's batches with the columns ``stage.needs`` names when called (fed ones included)."""
    task = dataclasses.replace(task, inputs=tuple(i for i in task.inputs if i[0] in stage.needs))
    return (batch for _, batch in shard_batches(stage, task, batch_rows))


def _fed_column(alias: str, parts: list[_ColumnStream | str], batch: pl.DataFrame, ids: pa.Array) -> pl.Series:
    """One fed column: a single source, or the coalesce of a derived-text chain (first non-null wins).
    Fed files are checked against the shard's ``ids`` (aligned by id, not only by position)."""
    cols = [batch.get_column(p) if isinstance(p, str) else pl.Series(p.take(ids)) for p in parts]
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
                fault_point("shard:mid_write")  # crash tests: a worker killed with a shard half written
                rows += batch.height
                row_errors += sum(e is not None for e in errors)
            writer.close()
        return ShardResult(task, "computed", rows=rows, row_errors=row_errors, seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a shard that cannot be processed is reported, not fatal
        return ShardResult(task, "failed", seconds=time.perf_counter() - t0,
                           error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")


def split_done(tasks: list[ShardTask]) -> tuple[list[ShardTask], list[ShardResult]]:
    """(tasks still to run, ``skipped`` results of those whose output is complete); a damaged
    output is redone."""
    done = {t: storage.complete_parquet_rows(t.out_path) for t in tasks}
    todo = [t for t in tasks if done[t] is None]
    return todo, [ShardResult(t, "skipped", rows=n) for t, n in done.items() if n is not None]


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
        """Shut the pool down (its workers tear their stages down on exit) and tear down the
        stages this process set up itself (``workers=1``)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        teardown_stages()

    def threads_per_worker(self) -> int:
        """Threads a stage may use: the CPUs shared among the workers (all of them with ``workers=1``)."""
        return max(1, (os.cpu_count() or 1) // self.workers)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, fn: Callable[..., Any], items: list[Any], desc: str = "working",
            resources: Resources | None = None) -> Iterator[Any]:
        """``fn(item)`` for each item, yielded in completion order, at most ``workers`` at once
        (``resources`` is accepted for the contract: one machine's pool has no placement)."""
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
        ctx = dataclasses.replace(ctx or StageContext(), threads=self.threads_per_worker())
        key = stage.key(name)
        todo, results = split_done(tasks)
        runner = _ShardRunner(stage, key, ctx, self.config.batch_rows)
        results.extend(self.map(runner, todo, desc=f"{name} ({len(todo)} shards)"))
        return sorted(results, key=lambda r: r.task.raw_path)

    def fit(self, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str,
            ctx: StageContext | None = None) -> dict[str, Any]:
        """Stream every shard of ``tasks`` (in order, with their fed columns) through ``stage.fit``.
        Runs in this process with all its CPUs: a fit is one pass that a stage may parallelise
        inside (Polars does; MinHash signing uses ``context.threads``)."""
        stage.bind(dataclasses.replace(ctx or StageContext(), threads=max(1, os.cpu_count() or 1)))
        from engines.reread_fit import TwoPassFit, fit_two_pass  # a second pass over chosen rows (MinHash)
        if isinstance(stage, TwoPassFit):
            return fit_two_pass(stage, [functools.partial(_shard_frames, stage, t, self.config.batch_rows)
                                        for t in tasks], artifact_dir)
        batches = (batch for t in tasks for _, batch in shard_batches(stage, t, self.config.batch_rows))
        return stage.fit(batches, artifact_dir)

    def fit_incremental(self, stage: GlobalStage, previous_dir: str, tasks: list[ShardTask],
                        earlier: list[ShardTask], artifact_dir: str) -> dict[str, Any]:
        """Stream the new shards of ``tasks`` through ``stage.fit_incremental`` on top of the
        artifact in ``previous_dir`` (fitted over the ``earlier`` shards, which it may read back)."""
        from engines.earlier_rows import ShardRows
        stage.bind(StageContext(threads=max(1, os.cpu_count() or 1)))
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


def make_executor(config: ExecutorConfig, show_progress: bool = True) -> Executor:
    """The executor named by ``executor.kind`` in the pipeline file."""
    if config.kind == "local":
        return LocalExecutor(config, show_progress=show_progress)
    if config.kind == "ray":
        from engines.ray_executor import RayExecutor  # Ray is an optional extra
        return RayExecutor(config, show_progress=show_progress)
    raise ValueError(f"unknown executor kind {config.kind!r}; available: local, ray")
