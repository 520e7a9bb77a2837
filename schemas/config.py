"""Pydantic models of the pipeline YAML, and a loader whose errors name the key and the line.

A pipeline file looks like (see demo/pipeline.yaml for a full one)::

    name: demo
    lake: ./lake                 # relative paths are relative to this file
    executor: {kind: local, workers: 2}
    sources:
      - name: wiki_en
        format: parquet
        paths: [data/wiki_en.parquet]
        columns: {text: text, id: url, url: url}
        license: CC-BY-SA-4.0
    stages:
      - {name: length, kind: length_filter, params: {min_words: 5}}
    release:
      name: demo
      select: "length.keep"

No value in the file is ever evaluated as code: ``select`` is parsed by a small grammar
(warehouse.selection) and stage kinds are looked up in a registry of known stages. Paths in the
file (sources, stage params such as benchmark files) are read as data, never executed. The file
itself is read with bounded size and alias expansion (schemas.yaml_safe), and every name that
becomes a folder or an SQL identifier is checked (schemas.names).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.gates import GatesConfig
from schemas.names import SafeName, StageName
from schemas.yaml_safe import YamlLimitError, line_of, load_yaml, read_limited


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnMap(_Strict):
    """Which input field feeds which document column. Unmapped fields go to ``meta`` as JSON."""

    text: str = "text"
    id: str | None = None
    url: str | None = None
    crawl_date: str | None = None
    license: str | None = None
    lang: str | None = None


class SourceConfig(_Strict):
    name: SafeName
    format: Literal["jsonl", "parquet", "hf", "hf_disk", "warc"]
    # Local paths, globs or fsspec URLs. Relative paths are relative to the pipeline file.
    paths: list[str]
    columns: ColumnMap = ColumnMap()
    license: str | None = None
    # For format "hf": the builder passed to datasets.load_dataset (json, csv, parquet, text).
    hf_builder: str | None = None
    # Documents larger than this (UTF-8 bytes) are quarantined instead of ingested.
    max_doc_bytes: int = 64 * 1024 * 1024
    # WARC: extract the main content only (drops navigation, footers) with resiliparse.
    main_content: bool = True
    # A path or glob that matches nothing is an error, unless the source is optional (then a warning).
    optional: bool = False

    @field_validator("paths")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a source needs at least one path")
        return v


class StageConfig(_Strict):
    """One annotating stage. ``name`` names its annotation columns (``<name>.<column>``)."""

    name: StageName
    kind: str
    params: dict[str, Any] = {}
    sources: list[str] | None = None  # None: every source
    # Columns this stage reads from earlier stages, when the default (the latest earlier stage
    # writing a column of that name) is not the one meant: {needed column: "stage.column"}.
    inputs: dict[str, str] = {}


class ReleaseConfig(_Strict):
    name: SafeName
    # Boolean expression over annotation columns, e.g. "length.keep and quality.score >= 0.5".
    select: str = "true"
    # "ingest": source, ingest run, shard, row (streamed, no global sort); "shuffle": seeded
    # random order; "curriculum": ordered by ``curriculum`` (implied when it is set).
    order: Literal["ingest", "shuffle", "curriculum"] = "ingest"
    seed: int = 0
    # How much of each source (planning.MixtureConfig: method, budget, max_epochs, end_phase...).
    mixture: dict[str, Any] | None = None
    # Order of the first phase (planning.CurriculumConfig: kind, column, folds, schedule...).
    curriculum: dict[str, Any] | None = None
    # Order of later phases, e.g. an annealing phase (default: seeded random).
    anneal: dict[str, Any] | None = None
    shard_rows: int = Field(default=50_000, gt=0)
    shard_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    # The text the release carries: derived text columns ("stage.column"), each stage reading the
    # previous one's output (stages[].inputs.text); empty: the raw text. See README "Text in a release".
    text: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")]] = []
    # Checks before publishing (schemas/gates.py); a failed gate fails the run and publishes nothing.
    gates: GatesConfig = GatesConfig()


class ExecutorConfig(_Strict):
    """``kind: local`` (a process pool) or ``ray``. ``address`` (ray only): ``auto`` joins the
    running cluster (``ray start`` / ``RAY_ADDRESS``), ``ray://host:10001`` connects a Ray client,
    null starts a private local Ray with ``workers`` CPUs for the run."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int | None = None  # None: number of CPUs
    batch_rows: int = Field(default=4096, gt=0)
    # Target size of a raw shard (uncompressed text bytes).
    shard_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    # Ray only: the driver's environment variables (names or fnmatch patterns) its Ray workers get
    # (engines.ray_executor.worker_env). It never changes output: left out of the config hash.
    forward_env: list[str] | None = Field(default=None, exclude=True)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and not v.startswith("ray://") and ":" not in v:
            raise ValueError(f"executor.address must be auto, ray://host:port, host:port or null; got {v!r}")
        return v


class PipelineConfig(_Strict):
    name: SafeName
    lake: str = "./lake"
    executor: ExecutorConfig = ExecutorConfig()
    sources: list[SourceConfig]
    stages: list[StageConfig] = []
    release: ReleaseConfig
    # Optional proxy-model ablation after the release (ablations.config.PipelineAblation); it
    # does not change what is released, so it is left out of the config hash.
    ablation: dict[str, Any] | None = Field(default=None, exclude=True)
    # Where the file was loaded from; relative paths resolve against its folder.
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("sources", "stages")
    @classmethod
    def _unique_names(cls, v: list[Any], info: Any) -> list[Any]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"{info.field_name[:-1]} names must be unique, repeated: {sorted(dup)}")
        return v

    def resolve(self, path: str) -> str:
        """A path from the file, made absolute against the file's folder (URLs untouched)."""
        if "://" in path or Path(path).is_absolute():
            return path
        return str((Path(self.base_dir) / path).resolve())

    @property
    def lake_path(self) -> str:
        return self.resolve(self.lake)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the config (without its location), 12 hex chars."""
        return stable_hash(self.model_dump(mode="json"))[:12]


class ConfigError(ValueError):
    """A pipeline file that does not validate; the message names file, line and key."""


def stable_hash(obj: Any) -> str:
    """sha256 hex of the canonical JSON form of obj (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file.

    Raises ConfigError with one line per problem: ``file:line: key.path: message``.
    """
    path = Path(path)
    node, data = read_config_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys name, sources, stages, release")
    data["base_dir"] = str(path.resolve().parent)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("invalid pipeline file:\n  " + "\n  ".join(validation_lines(e, node, str(path)))) from None


def validation_lines(e: ValidationError, node: yaml.Node | None, where: str) -> list[str]:
    """One ``where:line: key.path: message`` per pydantic error (the line from the YAML node tree)."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{where}:{line_of(node, loc)}: {key}: {err['msg']}" if node is not None
                     else f"{where}: {key}: {err['msg']}")
    return lines


def read_config_yaml(path: Path) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and data of a pipeline file; ConfigError if unreadable,
    not YAML, or over the size/alias limits of schemas.yaml_safe."""
    try:
        text = read_limited(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file (pass the path of a YAML file, e.g. demo/pipeline.yaml)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass the path of a pipeline YAML file") from None
    except YamlLimitError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return load_yaml(text)
    except YamlLimitError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
