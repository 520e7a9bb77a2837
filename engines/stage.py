"""The stage contract: what every annotating stage implements, whatever executor runs it.

A **per-shard stage** (``Stage``) reads some document columns of one raw shard, batch by
batch, and returns the same number of rows with its own columns. The executor writes those
columns, plus ``id`` and ``_error``, to an annotation file aligned row by row with the shard.

A **global stage** (``GlobalStage``) first sees the whole corpus once in ``fit`` (streamed,
shard by shard) and writes a versioned artifact (a classifier, a dedup index, a plan); then it
is applied per shard like any other stage, loading the artifact in ``setup``.

Conventions every stage follows:

- ``kind`` is the name used in the YAML (``stages[].kind``), ``version`` changes whenever the
  output for the same input and params would change (it is part of the output path).
- ``setup`` runs once per worker process (load models there, not in ``transform``).
- ``transform`` is a pure function of the batch: no hidden state between batches, so a shard
  can be recomputed alone and the result is identical.
- Filters write ``keep`` (bool) and ``reason`` (str, null when kept): the release selection and
  the drop-reason statistics read those two by convention.
- A stage never deletes rows and never rewrites ``text``; a cleaned text is a column of its own,
  declared in ``text_columns`` and null where the text is unchanged (engines/derived_text.py).

Stages must be picklable before ``setup`` (parameters only), so a process pool or a Ray task
can ship them to workers.

What a stage tells its executor, and what the executor tells the stage (stages never know which
executor runs them):

- ``resources()``: CPUs, GPUs and memory one worker of the stage needs (a Ray executor places
  workers by it; the local executor runs ``workers`` processes whatever it says);
- ``stateful``: ``setup`` is expensive (a model load), so the stage should live in long-lived
  workers (actors on Ray) that each set it up once and process many shards;
- ``runtime_params``: params that change speed, never output (threads, batch sizes): excluded
  from the stage key, so changing them recomputes nothing;
- ``StageContext.threads``: how many threads this worker may use, decided by the executor;
- ``teardown()``: release what ``setup`` took (GPU memory, servers); called once per set-up copy
  when the executor is done with it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from engines.storage_dirs import local_dir
from schemas.config import stable_hash


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. ``memory`` in bytes (0: no reservation)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int = 0
class _LocalFolder:
    """A folder field that is stored as given (a lake URL) and read as a local folder: on a remote
    lake the first read in a process fetches it (engines.storage_dirs.local_dir), so every stage
    reads its artifact with local-file APIs under any executor, on any node."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> str | None:
        url = None if obj is None else obj.__dict__.get(self.attr)
        return local_dir(url) if url is not None else None

    def __set__(self, obj: Any, value: str | None) -> None:
        obj.__dict__[self.attr] = value


@dataclass
class StageContext:
    """What the executor tells a stage about where it runs."""

    # A global stage's fitted artifact (read in setup): set to its lake URL, read as a local folder.
    artifact_dir: _LocalFolder = _LocalFolder()  # type: ignore[assignment]
    cache_dir: str | None = None  # where result caches live (<lake>/cache in a pipeline run)
    # Threads this worker may use (set by the executor: 1 in a pool of single-CPU workers, the
    # stage's CPU reservation on Ray, all CPUs when the stage runs alone in the driver).
    threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    extra: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class of per-shard stages. Subclasses set the class attributes and ``transform``."""

    kind: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    # Document columns this stage reads (``id`` is always available).
    needs: ClassVar[tuple[str, ...]] = ("text",)
    Params: ClassVar[type[BaseModel]] = NoParams
    # Derived text columns it writes (null where unchanged): what ``release.text`` and
    # ``stages[].inputs: {text: stage.column}`` may name.
    text_columns: ClassVar[tuple[str, ...]] = ()
    # Optional packages it needs, by pip extra: {"models": ("torch", "transformers")} (engines/extras.py).
    # Checked when the pipeline is configured, so a missing extra fails with the pip command that fixes it.
    requires: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Params naming local files the stage reads ("key", "key.sub", "items[].path"): `curate validate`
    # checks they exist. Such files are read as data, never executed.
    path_params: ClassVar[tuple[str, ...]] = ()
    # Params naming sources, in the same notation ("positive[]"): `curate validate` checks the names.
    source_params: ClassVar[tuple[str, ...]] = ()
    # Params that change speed but never output ("threads", "inference.batch_size"): left out of
    # the stage key, so tuning them recomputes nothing.
    runtime_params: ClassVar[tuple[str, ...]] = ()
    # Set-up is expensive (a model load): executors keep set-up copies in long-lived workers.
    stateful: ClassVar[bool] = False

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, upstream: dict[str, str] | None = None):
        if params is None or isinstance(params, dict):
            params = self.Params.model_validate(params or {})
        self.params = params
        # Keys of the stages whose annotations this one reads (part of its own key).
        self.upstream = dict(upstream or {})
        # The pipeline file's folder: relative paths in params are relative to it.
        self.base_dir = "."
        # Where it runs (threads, artifact, caches): set by the executor before setup and fit.
        self.context = StageContext()

    # --- contract -------------------------------------------------------------------------
    def writes(self) -> dict[str, pa.DataType]:
        """The columns ``transform`` returns, with their Arrow types."""
        raise NotImplementedError

    def resources(self) -> Resources:
        """CPUs/GPUs/memory of one worker of this stage (default: one CPU). Override when it
        depends on params (a vLLM backend needs a GPU, a transformers one on CPU does not)."""
        return Resources()

    def bind(self, ctx: StageContext) -> None:
        """Called by the executor before ``setup`` or ``fit``: records where the stage runs."""
        self.context = ctx

    def requirements(self) -> dict[str, tuple[str, ...]]:
        """``requires``, or what these params need (override when it depends on them)."""
        return dict(self.requires)

    def setup(self, ctx: StageContext) -> None:
        """Load models and compile what is expensive; called once per worker process."""

    def teardown(self) -> None:
        """Release what ``setup`` took (models, GPU memory, threads, servers). Called once per
        set-up copy when its executor is done with it; default: nothing to release."""

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Return one row per input row, in order, with exactly the columns of ``writes()``."""
        raise NotImplementedError

    def resolve_path(self, path: str) -> str:
        """A path from the params, made absolute against the pipeline file's folder."""
        if "://" in path or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))

    # --- identity ---------------------------------------------------------------------------
    def config_hash(self) -> str:
        """Hash of the params that decide the output (``runtime_params`` left out) and upstream keys."""
        params = self.params.model_dump(mode="json")
        for dotted in self.runtime_params:
            _drop_path(params, dotted.split("."))
        return stable_hash({"params": params, "upstream": self.upstream})[:10]

    def key(self, name: str) -> str:
        """``<name>@<version>-<cfg>``: the folder of its annotations and artifacts."""
        return f"{name}@{self.version}-{self.config_hash()}"


def _drop_path(obj: Any, parts: list[str]) -> None:
    """Remove ``a.b.c`` (``items[].x`` for every item of a list) from nested params in place."""
    head, rest = parts[0], parts[1:]
    if not isinstance(obj, dict):
        return
    if head.endswith("[]"):
        for item in obj.get(head[:-2]) or []:
            if rest:
                _drop_path(item, rest)
        return
    if head not in obj:
        return
    if rest:
        _drop_path(obj[head], rest)
    else:
        del obj[head]


class GlobalStage(Stage):
    """A stage with a fit step over the whole corpus before per-shard application.

    ``fit_policy`` says what a later (nightly) run does with an earlier fit (docs/nightly.md):

    - ``"pinned"``: the fitted artifact scores documents (a classifier, a selection): fit once,
      then reused for new shards until the stage key (version, params, upstream keys) or
      ``fit_inputs()`` change, or the user asks ``curate run --refit NAME``. Old annotations
      stay as they are.
    - ``"incremental"``: the artifact is an index of earlier shards; ``fit_incremental`` adds
      the new shards to it. An earlier document's verdict never changes.
    - ``"full"``: refit over every shard whenever the shard set changes (and re-annotate every
      shard). The default, so a stage that promises nothing keeps its old behaviour.

    An instance may narrow the class default in ``__init__`` (say ``minhash_dedup`` with a
    survivor policy under which a new document can beat an old one).
    """

    fit_policy: ClassVar[str] = "full"
    # False for a fit that reads only its own inputs (benchmark files), never the corpus.
    fit_reads_corpus: ClassVar[bool] = True

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        """Consume the corpus (the ``needs`` columns, streamed) and write the artifact.

        Returns a small dict of metrics recorded in the catalog.
        """
        raise NotImplementedError

    def fit_inputs(self) -> dict[str, Any]:
        """What the fit reads besides the corpus and its params (say the SHA-256 of a benchmark
        file): part of the fit's identity, so a changed file refits a pinned stage."""
        return {}

    def fit_incremental(self, previous_dir: str, batches: Iterator[pl.DataFrame], artifact_dir: str,
                        earlier: EarlierRows) -> dict[str, Any]:
        """(``fit_policy = "incremental"``) Write to ``artifact_dir`` the index of the earlier
        shards (``previous_dir``, the artifact of the last fit) plus the new shards (``batches``,
        in lake order, all after the earlier ones). ``earlier`` reads back chosen rows of the
        earlier shards (by lake-order position) when the update needs them."""
        raise NotImplementedError


class EarlierRows:
    """Rows of the shards an earlier fit covered, by position in lake order (0 = first row of the
    first shard). The executor implements it; a stage only calls ``rows``."""

    def rows(self, positions: Any, columns: list[str]) -> pl.DataFrame:
        """The document ``columns`` of the rows at ``positions`` (sorted, unique), in that order."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to pipeline files under ``cls.kind``."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"stage kind {cls.kind!r} registered twice ({_REGISTRY[cls.kind].__name__}, {cls.__name__})")
    _REGISTRY[cls.kind] = cls
    return cls


def stage_class(kind: str) -> type[Stage]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none loaded)"
        raise KeyError(f"unknown stage kind {kind!r}; known kinds: {known}") from None


def known_kinds() -> list[str]:
    return sorted(_REGISTRY)
