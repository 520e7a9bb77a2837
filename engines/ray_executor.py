"""The Ray executor: the same stages, shard tasks and outputs as the local executor, on a Ray cluster.

``executor: {kind: ray, address: ...}`` in a pipeline file. ``address: null`` starts a private
local Ray for the run (``workers`` CPUs); ``auto`` joins the cluster this machine belongs to
(``ray start``, ``RAY_ADDRESS``); ``ray://head:10001`` connects a Ray client.

How stages are placed (stages never know; they declare ``resources()`` and ``stateful``):

- a cheap per-shard stage runs as one Ray **task** per shard, reserving the stage's
  ``resources()``; Ray reuses worker processes, which keep the set-up stage between shards;
- a ``stateful`` stage (a model load in ``setup``) runs on a pool of **actors**, as many as the
  cluster's free resources allow for one worker's reservation (a vLLM stage: one actor per GPU);
  each actor sets the stage up once, takes shards one at a time, and is torn down at the end;
- a global stage's **fit** runs as a map task per shard and a reduce task per partition when the
  stage offers it (``engines.partitioned_fit``: exact and MinHash dedup and their nightly updates;
  see ``engines.ray_fit``), else as one Ray task with all of a node's CPUs (the fit streams the
  whole corpus once), which on an object-store lake uploads the artifact itself, so the driver may
  be a Ray client off the cluster; either way its artifacts are the local executor's;
- ``map`` (ingest) runs each item as a task.

Both executors call the same ``run_shard``, so annotation files are byte-identical. Every output is
written atomically and a shard whose output exists is skipped, so a killed worker (Ray retries
its task, or restarts its actor, up to ``RETRIES`` times) or a killed driver (re-run the pipeline)
costs only the shards in flight. A shard that still fails is a ``failed`` result with the error,
as with the local executor. Progress goes to the Prefect run log (and a progress bar).

On a multi-machine cluster the lake must be reachable from every node (S3 or a shared
filesystem): workers read raw shards and write annotations themselves, nothing passes through the
driver but shard paths and row counts. The workers get the driver's S3 endpoint, region and
credentials with the job (``worker_env``), so the same pipeline file runs with ``lake: s3://...``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import time
from typing import Any, Callable, Iterator

from engines import storage
from engines.executor import (
    ShardResult,
    ShardTask,
    _NullProgress,
    _progress,
    run_shard,
    shard_batches,
    split_done,
    teardown_stages,
)
from engines.extras import install_command
from engines.faults import fault_point
from engines.partitioned_fit import PartitionedFit, PartitionedIncrementalFit
from engines.stage import GlobalStage, Resources, Stage, StageContext
from engines.storage_dirs import fill_remotely, lake_url, local_dir, staged_dir
from schemas.config import ExecutorConfig

# Retries of a task whose worker process died (and restarts of a dead actor).
RETRIES = 2
# Object store of a private local Ray (bytes).
OBJECT_STORE_BYTES = 500_000_000
# Connections a Ray client (ray://) tries (see _init_with_retry).
CLIENT_TRIES = 3
# Seconds between progress lines in the run log.
LOG_EVERY_S = 10.0
# What the workers get of the driver's environment unless executor.forward_env says otherwise:
# the S3 endpoint (MinIO, Ceph, moto...), region and credentials botocore/s3fs read. Not
# AWS_PROFILE or credential-file paths: they name files on the driver's machine.
FORWARD_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def worker_env(forward: list[str] | None = None) -> dict[str, str]:
    """The driver's environment variables its Ray workers get (the job's ``runtime_env``).

    Always the ``CURATE_*`` switches (plugins, scratch folder, fault injection) and the
    ``VLLM_*`` engine settings (``VLLM_CPU_KVCACHE_SPACE``, thread binding: a vLLM model stage's
    actor must see what the driver was given). Then each
    variable named by ``forward`` (``executor.forward_env``; names or fnmatch patterns), by
    default ``FORWARD_ENV``: where the lake's object store is and the credentials to reach it,
    so ``lake: s3://...`` reaches the workers exactly as the driver reaches it. Variables the
    driver does not have are not sent, so a worker keeps what its node gives it (an IAM role, a
    pod's Secret). ``forward_env: []`` sends none of them (credentials in ``runtime_env`` are
    visible to whoever can read the cluster's job list)."""
    patterns = ["CURATE_*", "VLLM_*", *(FORWARD_ENV if forward is None else forward)]
    return {k: v for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"executor.kind: ray needs the Ray extra: {install_command(['ray'])}") from None
    return ray


def _log() -> Any:
    """The Prefect run logger inside a flow run (so progress shows in the Prefect UI), else ours."""
    try:
        from prefect import get_run_logger
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow or task run
        return logging.getLogger("curate.ray")


# --- what runs on the workers (module-level, so Ray pickles them by reference) ----------------
def _call(fn: Callable[..., Any], item: Any) -> Any:
    return fn(item)


def _shard(stage: Stage, key: str, task: ShardTask, ctx: StageContext, batch_rows: int) -> ShardResult:
    return run_shard(stage, key, task, ctx, batch_rows)


def _fit(stage: GlobalStage, tasks: list[ShardTask], target: str, ctx: StageContext,
         batch_rows: int) -> dict[str, Any]:
    with _fit_folder(target) as folder:
        stage.bind(ctx)
        batches = (batch for t in tasks for _, batch in shard_batches(stage, t, batch_rows))
        return {"metrics": stage.fit(batches, folder), **_where(folder)}


def _fit_incremental(stage: GlobalStage, previous: str, tasks: list[ShardTask], earlier: list[str],
                     target: str, ctx: StageContext, batch_rows: int) -> dict[str, Any]:
    from engines.earlier_rows import ShardRows
    with _fit_folder(target) as folder:
        stage.bind(ctx)
        batches = (batch for t in tasks for _, batch in shard_batches(stage, t, batch_rows))
        metrics = stage.fit_incremental(local_dir(previous), batches, folder, ShardRows(earlier))  # type: ignore[attr-defined]
        return {"metrics": metrics, **_where(folder)}


@contextlib.contextmanager
def _fit_folder(target: str) -> Iterator[str]:
    """Where a fit task writes its artifact: a lake URL (an object store) -> a folder this task
    stages on its own node and uploads when the fit returns (``staged_dir``; the driver adds the
    marker on top), so the driver may be anywhere, a Ray client included; a local path -> that
    folder itself (the driver's staged folder, on the driver's node or a shared filesystem)."""
    if storage.is_local_url(target):
        yield target
        return
    with staged_dir(target) as folder:
        yield folder


def _where(folder: str) -> dict[str, Any]:
    """What the driver logs of a fit task: its node and the files it wrote."""
    import ray
    return {"node": ray.get_runtime_context().get_node_id(),
            "files": sum(len(files) for _, _, files in os.walk(folder))}


def _is_client() -> bool:
    """True when this process is a Ray client (``ray://``): not a process on a cluster node."""
    from ray.util.client import ray as client
    return bool(client.is_connected())


def _init_with_retry(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """``ray.init(address)``; a Ray client connection is tried ``CLIENT_TRIES`` times: the head's
    client server sometimes fails to start the server it forks for a new client ("Starting Ray
    client server failed"; in Ray 2.60 a gRPC fork race, logged as ``Check failed:
    next_worker->state == KICKED``), and the next connection gets a fresh one."""
    for attempt in range(1, CLIENT_TRIES + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionAbortedError as e:
            if not address.startswith("ray://") or attempt == CLIENT_TRIES:
                raise
            _log().warning("ray: connecting to %s failed (%s); trying again", address, str(e).strip()[-200:])
            with contextlib.suppress(Exception):
                ray.shutdown()


class _MapActor:
    """Runs ``fn(item)`` for ``map`` items that reserve a GPU. A GPU task's worker would exit
    after each call (Ray's ``max_calls`` is 1 for GPU tasks), reloading the model per item; an
    actor keeps its model between items and releases it in ``teardown`` before it is killed."""

    def run(self, fn: Callable[..., Any], item: Any) -> Any:
        return fn(item)

    def teardown(self) -> None:
        from engines.inference.base import close_open_backends
        teardown_stages()
        close_open_backends()

    def pid(self) -> int:
        return os.getpid()


class _ShardActor(_MapActor):
    """Holds one set-up copy of a stateful stage (one model load) and processes shards with it."""

    def __init__(self, stage: Stage, key: str, ctx: StageContext, batch_rows: int):
        self.stage, self.key, self.ctx, self.batch_rows = stage, key, ctx, batch_rows

    def run(self, task: ShardTask) -> ShardResult:  # type: ignore[override]
        return run_shard(self.stage, self.key, task, self.ctx, self.batch_rows)


def _options(res: Resources) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.memory:
        opts["memory"] = res.memory
    return opts


class RayExecutor:
    """Runs stages on a Ray cluster (see the module docstring). Implements ``engines.executor.Executor``."""

    def __init__(self, config: ExecutorConfig | None = None, show_progress: bool = True):
        self.config = config or ExecutorConfig(kind="ray")
        self.show_progress = show_progress
        self.ray = _import_ray()
        self._owns_ray = False  # we started a private Ray: shut it down at close
        self._connected = False  # we connected this process: disconnect at close
        self._fns: dict[str, Any] = {}

    # --- connection -----------------------------------------------------------------------------
    def _connect(self) -> Any:
        ray = self.ray
        if ray.is_initialized():
            return ray
        env = worker_env(self.config.forward_env)
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env} if env else None, "logging_level": logging.WARNING}
        if self.config.address is None:
            # Objects passed around are small (stages' params, shard paths, fit metrics): a small store.
            ray.init(num_cpus=self.config.workers or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, **kwargs)
            self._owns_ray = True
        else:
            _init_with_retry(ray, self.config.address, kwargs)
        self._connected = True
        res = ray.cluster_resources()
        _log().info("ray: connected to %s (%s nodes, %s CPUs, %s GPUs); workers get %s", self.config.address or
                    "a local Ray", len([n for n in ray.nodes() if n.get("Alive")]), res.get("CPU", 0),
                    res.get("GPU", 0), ", ".join(sorted(env)) or "no variables of the driver")
        return ray

    def _remote(self, fn: Callable[..., Any]) -> Any:
        if fn.__name__ not in self._fns:
            self._fns[fn.__name__] = self.ray.remote(max_retries=RETRIES)(fn)
        return self._fns[fn.__name__]

    def close(self) -> None:
        """Disconnect (and stop the private Ray, if this executor started one); a cluster joined
        with ``address`` keeps running. A Ray this process was already connected to is left alone."""
        teardown_stages()
        if self._connected and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = self._connected = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- capacity -------------------------------------------------------------------------------
    def _slots(self, res: Resources) -> int:
        """How many workers with this reservation the cluster holds at once (at least one)."""
        total = self.ray.cluster_resources()
        n = int(total.get("CPU", 0) // res.cpus) if res.cpus else 1_000_000
        if res.gpus:
            n = min(n, int(total.get("GPU", 0) // res.gpus))
            if n == 0:
                raise RuntimeError(f"the stage needs {res.gpus} GPU per worker and the Ray cluster has "
                                   f"{total.get('GPU', 0)}: add GPU nodes or use a CPU backend")
        return max(1, n)

    def _node_cpus(self, node_id: str | None) -> int:
        """CPUs of that node (``None``: of the largest live node)."""
        cpus = [n["Resources"].get("CPU", 0) for n in self.ray.nodes()
                if n.get("Alive") and node_id in (None, n.get("NodeID"))]
        return max(1, int(max(cpus or [1])))

    # --- the contract ---------------------------------------------------------------------------
    def map(self, fn: Callable[..., Any], items: list[Any], desc: str = "working",
            resources: Resources | None = None) -> Iterator[Any]:
        """``fn(item)`` as Ray tasks, each reserving ``resources`` (default one CPU; a vLLM rewrite
        reserves a GPU), at most twice as many in flight as the cluster holds at once. Ray reuses
        worker processes, so a model a task loads into a module-level cache serves later items."""
        ray = self._connect()
        res = resources or Resources()
        if res.gpus:
            yield from self._map_on_actors(fn, items, desc, res)
            return
        remote = self._remote(_call).options(**_options(res))
        fn_ref = ray.put(fn)
        limit = 2 * self._slots(res)
        queue, pending = list(reversed(items)), list[Any]()
        with self._bar(desc, len(items)) as (prog, bar):
            while queue or pending:
                while queue and len(pending) < limit:
                    pending.append(remote.remote(fn_ref, queue.pop()))
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
                    prog.advance(bar)

    def _map_on_actors(self, fn: Callable[..., Any], items: list[Any], desc: str, res: Resources) -> Iterator[Any]:
        """``map`` for GPU work: one actor per GPU slot (one model load each), items handed to
        whichever actor is free; the actors release their models and end when the map ends."""
        ray = self.ray
        cls = ray.remote(_MapActor).options(max_restarts=RETRIES, max_task_retries=RETRIES, **_options(res))
        actors = [cls.remote() for _ in range(min(len(items), self._slots(res)))]
        fn_ref = ray.put(fn)
        queue, idle = list(reversed(items)), list(actors)
        pending: dict[Any, Any] = {}
        try:
            with self._bar(f"{desc} ({len(actors)} actors)", len(items)) as (prog, bar):
                while queue or pending:
                    while queue and idle:
                        a = idle.pop()
                        pending[a.run.remote(fn_ref, queue.pop())] = a
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        idle.append(pending.pop(ref))
                        yield ray.get(ref)
                        prog.advance(bar)
        finally:
            self._retire(actors)

    def run_stage(self, name: str, stage: Stage, tasks: list[ShardTask],
                  ctx: StageContext | None = None) -> list[ShardResult]:
        ray = self._connect()
        res = stage.resources()
        ctx = dataclasses.replace(ctx or StageContext(), threads=max(1, int(res.cpus)))
        key = stage.key(name)
        todo, results = split_done(tasks)
        if todo:
            log = _log()
            how = "actors" if stage.stateful else "tasks"
            log.info("stage %s: %s shards on Ray %s (%s per worker), %s already done",
                     name, len(todo), how, res, len(results))
            stage_ref = ray.put(stage)
            run = self._run_on_actors if stage.stateful else self._run_as_tasks
            results.extend(run(name, stage_ref, key, todo, ctx, res))
        return sorted(results, key=lambda r: r.task.raw_path)

    def fit(self, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str,
            ctx: StageContext | None = None) -> dict[str, Any]:
        """A stage that offers its fit in partitions (``engines.partitioned_fit``: exact and MinHash dedup) runs as
        a map task per shard and a reduce task per partition (``engines.ray_fit``); any other fit is
        one Ray task streaming every shard through ``stage.fit`` with all of a node's CPUs (the fit's
        threads; see ``_fit_task``). Either way the artifact is the local executor's, file for file."""
        if isinstance(stage, PartitionedFit) and len(tasks) > 1:
            return self._partitioned_fit(stage, tasks, artifact_dir, ctx)
        return self._fit_task(_fit, stage, len(tasks), artifact_dir, ctx, stage, tasks)

    def fit_incremental(self, stage: GlobalStage, previous_dir: str, tasks: list[ShardTask],
                        earlier: list[ShardTask], artifact_dir: str) -> dict[str, Any]:
        """``stage.fit_incremental`` over the new shards: as map and reduce tasks over the new
        shards and a finish that merges them into ``previous_dir`` when the stage offers it
        (``PartitionedIncrementalFit``: exact and MinHash dedup), else as one Ray task (see ``fit``).
        ``previous_dir``: a local folder of the earlier state (the tasks read its lake copy)."""
        if isinstance(stage, PartitionedIncrementalFit) and len(tasks) > 1:
            return self._partitioned_fit(stage, tasks, artifact_dir, None, previous_dir, earlier)
        return self._fit_task(_fit_incremental, stage, len(tasks), artifact_dir, None, stage, lake_url(previous_dir),
                              tasks, [t.raw_path for t in earlier])

    def _partitioned_fit(self, stage: GlobalStage, tasks: list[ShardTask], artifact_dir: str, ctx: StageContext | None,
                         previous_dir: str | None = None, earlier: list[ShardTask] | None = None) -> dict[str, Any]:
        from engines.ray_fit import partitioned_fit
        ray = self._connect()
        res = stage.resources()
        ctx = dataclasses.replace(ctx or StageContext(), threads=max(1, int(res.cpus)))
        metrics, line = partitioned_fit(ray, stage, tasks, artifact_dir, ctx, self.config.batch_rows,
                                        self._slots(res), _options(res), RETRIES, previous_dir, earlier or [])
        _log().info(line)
        return metrics

    def _fit_task(self, fn: Callable[..., Any], stage: GlobalStage, shards: int, artifact_dir: str,
                  ctx: StageContext | None, *args: Any) -> dict[str, Any]:
        """One Ray task running ``fn(*args, target, ctx, batch_rows)``. On an object-store lake the
        task writes the artifact on whatever node it runs and uploads it itself (``target``: the
        lake URL, ``storage_dirs.fill_remotely``), on the largest node; the driver may be a Ray
        client on another machine. Else ``target`` is the driver's staged folder, so the task is
        pinned to the driver's node (unless the driver is a Ray client: then the folder must be on
        a filesystem every node shares), with all of that node's CPUs."""
        ray = self._connect()
        target = fill_remotely(artifact_dir)
        opts: dict[str, Any] = {}
        node = None
        if target is None and not _is_client():
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            node = ray.get_runtime_context().get_node_id()
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        cpus = max(self._node_cpus(node), int(stage.resources().cpus))
        ctx = dataclasses.replace(ctx or StageContext(), threads=cpus)
        res = dataclasses.replace(stage.resources(), cpus=cpus)
        t0 = time.perf_counter()
        ref = self._remote(fn).options(**_options(res), **opts).remote(*args, target or artifact_dir, ctx,
                                                                        self.config.batch_rows)
        out = ray.get(ref)
        how = f"{out['files']} files uploaded to the lake by the task" if target else "written to the driver's folder"
        _log().info("fit of %s over %s shards: %.1f s on Ray (node %s, %s)", stage.kind, shards,
                    time.perf_counter() - t0, out["node"][:12], how)
        return out["metrics"]  # type: ignore[no-any-return]

    # --- per-shard placement --------------------------------------------------------------------
    def _run_as_tasks(self, name: str, stage_ref: Any, key: str, todo: list[ShardTask], ctx: StageContext,
                      res: Resources) -> list[ShardResult]:
        ray = self.ray
        remote = self._remote(_shard).options(**_options(res))
        limit = 2 * self._slots(res)
        queue = list(reversed(todo))
        pending: dict[Any, ShardTask] = {}
        out: list[ShardResult] = []
        with self._bar(f"{name} ({len(todo)} shards)", len(todo)) as (prog, bar):
            watch = _Progress(name, len(todo))
            while queue or pending:
                while queue and len(pending) < limit:
                    t = queue.pop()
                    pending[remote.remote(stage_ref, key, t, ctx, self.config.batch_rows)] = t
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    out.append(self._result(ref, pending.pop(ref)))
                    prog.advance(bar)
                    watch.tick(out[-1])
        return out

    def _run_on_actors(self, name: str, stage_ref: Any, key: str, todo: list[ShardTask], ctx: StageContext,
                       res: Resources) -> list[ShardResult]:
        ray = self.ray
        cls = ray.remote(_ShardActor).options(max_restarts=RETRIES, max_task_retries=RETRIES, **_options(res))
        actors = [cls.remote(stage_ref, key, ctx, self.config.batch_rows)
                  for _ in range(min(len(todo), self._slots(res)))]
        queue = list(reversed(todo))
        pending: dict[Any, tuple[Any, ShardTask]] = {}
        out: list[ShardResult] = []
        try:
            with self._bar(f"{name} ({len(todo)} shards, {len(actors)} actors)", len(todo)) as (prog, bar):
                watch = _Progress(name, len(todo))
                idle = list(actors)
                while queue or pending:
                    while queue and idle:
                        a = idle.pop()
                        t = queue.pop()
                        pending[a.run.remote(t)] = (a, t)
                    if not pending:  # every actor is gone: the rest cannot run
                        out.extend(ShardResult(t, "failed", error="no live Ray actor left for this stage")
                                   for t in reversed(queue))
                        break
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        a, t = pending.pop(ref)
                        r = self._result(ref, t)
                        out.append(r)
                        if not (r.status == "failed" and r.error and r.error.startswith("ray:")):
                            idle.append(a)  # an actor that died for good is not reused
                        prog.advance(bar)
                        watch.tick(r)
        finally:
            self._retire(actors)
        return out

    def _retire(self, actors: list[Any]) -> None:
        """Tear the stage down in every actor (releases models/GPU memory), then end them."""
        ray = self.ray
        refs = [a.teardown.remote() for a in actors]
        for ref in refs:
            try:
                ray.get(ref, timeout=120)
            except Exception:  # noqa: BLE001 - a dead actor has nothing left to release
                pass
        for a in actors:
            ray.kill(a)

    def _result(self, ref: Any, task: ShardTask) -> ShardResult:
        """The shard's result; a worker or actor that died past its retries is a failed shard."""
        try:
            return self.ray.get(ref)  # type: ignore[no-any-return]
        except self.ray.exceptions.RayError as e:
            return ShardResult(task, "failed", error=f"ray: {type(e).__name__}: {str(e)[:1500]}")

    def _bar(self, desc: str, total: int) -> Any:
        return _Bar(_progress() if self.show_progress else _NullProgress(), desc, total)


class _Bar:
    def __init__(self, prog: Any, desc: str, total: int):
        self.prog, self.desc, self.total = prog, desc, total

    def __enter__(self) -> tuple[Any, Any]:
        self.prog.__enter__()
        return self.prog, self.prog.add_task(self.desc, total=self.total)

    def __exit__(self, *exc: object) -> None:
        self.prog.__exit__(*exc)


class _Progress:
    """Progress lines in the run log: every ``LOG_EVERY_S`` seconds and at the end."""

    def __init__(self, name: str, total: int):
        self.name, self.total = name, total
        self.done = self.failed = self.rows = 0
        self.t0 = self.last = time.perf_counter()

    def tick(self, r: ShardResult) -> None:
        self.done += 1
        self.failed += r.status == "failed"
        self.rows += r.rows
        now = time.perf_counter()
        if r.status == "computed":
            fault_point("ray:driver_after_shard")  # crash tests: the driver killed mid-stage
        if now - self.last >= LOG_EVERY_S or self.done == self.total:
            self.last = now
            el = now - self.t0
            _log().info("stage %s: %s/%s shards done (%s failed), %s rows, %.0f rows/s", self.name, self.done,
                        self.total, self.failed, self.rows, self.rows / el if el > 0 else 0.0)
