"""Checking a pipeline file before anything runs: ``curate validate`` and the start of ``curate run``.

Everything that can be known from the file and the disk is checked here, without Prefect (its
temporary server takes tens of seconds to start) and without loading a model:

- the YAML itself and its schema (schemas.config.load_config: size and alias limits, names,
  unknown keys, types; each error names the file line and the key);
- each stage: a known ``kind`` (else "did you mean ..."), its ``params`` against the stage's
  Params model (an unknown key lists the valid ones), source names in params (``source_params``,
  e.g. fasttext_quality's positive/negative), its ``inputs:`` (``stage.column`` of an earlier
  stage that writes it, for a column the stage reads), its ``sources:``, and the columns it needs
  being provided;
- local files named in params (benchmarks, CSV/Parquet tables, model files and folders), and
  ``release.mixture.results``;
- the expressions: ``release.select`` parsed against the stages' columns, and the mixture and
  curriculum blocks (their source and column references);
- source paths: each path or glob must match at least one file, unless the source is
  ``optional: true`` (then a warning);
- ``--reingest`` names.

All problems are collected and reported at once, one short line each (``file:line: key: what``).
Cost: globbing the sources' paths and a stat per named file; no input is read.
"""
from __future__ import annotations

import ast
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engines import extras
from schemas.config import ConfigError, PipelineConfig, load_config, read_config_yaml
from schemas.derived import derived_source_problems, source_names
from schemas.documents import DOCUMENT
from schemas.yaml_safe import line_of


@dataclass
class Report:
    """The outcome of validating one pipeline file."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cfg: PipelineConfig | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """ConfigError listing every error (for callers that are not the CLI)."""
        if self.errors:
            raise ConfigError("invalid pipeline file:\n  " + "\n  ".join(self.errors))


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    def __init__(self, path: Path, cfg: PipelineConfig, node: yaml.Node | None, report: Report):
        self.path, self.cfg, self.node, self.report = path, cfg, node, report

    def at(self, *loc: Any) -> str:
        key = ".".join(str(p) for p in loc)
        return f"{self.path}:{line_of(self.node, loc)}: {key}"

    def error(self, loc: tuple[Any, ...], message: str) -> None:
        self.report.errors.append(f"{self.at(*loc)}: {message}")

    def warn(self, loc: tuple[Any, ...], message: str) -> None:
        self.report.warnings.append(f"{self.at(*loc)}: {message}")

    def pydantic_errors(self, loc: tuple[Any, ...], e: ValidationError, model: type[BaseModel]) -> None:
        for err in e.errors():
            sub = tuple(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg += f"; valid keys: {', '.join(sorted(model.model_fields)) or '(none)'}"
                msg += did_you_mean(str(sub[-1]), sorted(model.model_fields))
            self.error(loc + sub, msg)

    def local_file(self, loc: tuple[Any, ...], path: str, base: str | None = None) -> None:
        """Error if a local path (not a URL) does not exist; relative paths resolve against ``base``."""
        if "://" in path:
            return
        full = os.path.expanduser(path)
        if base is not None and not os.path.isabs(full):
            full = os.path.normpath(os.path.join(base, full))
        if not os.path.exists(full):
            shown = path if full == path else f"{path} ({full})"
            self.error(loc, f"no such file or folder: {shown}")


def _values_at(data: Any, spec: str, loc: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """The (location, value) pairs a path_params spec such as ``benchmarks[].path`` names in data."""
    if not spec:
        return [(loc, data)]
    head, _, rest = spec.partition(".")
    each = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(data, dict) or data.get(key) is None:
        return []
    value = data[key]
    if each:
        items = value if isinstance(value, list) else []
        return [hit for i, item in enumerate(items) for hit in _values_at(item, rest, loc + (key, i))]
    return _values_at(value, rest, loc + (key,))


def _model_paths(params: BaseModel, loc: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """``inference.model`` values that are local paths (absolute, ./, ../ or ~), anywhere in params."""
    from engines.inference.base import InferenceConfig
    out: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(params, InferenceConfig):
        m = params.model
        if params.backend != "openai" and m.startswith(("/", "./", "../", "~")):
            out.append((loc + ("model",), m))
        return out
    for name in type(params).model_fields:
        value = getattr(params, name, None)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                out.extend(_model_paths(item, loc + ((name, i) if isinstance(value, list) else (name,))))
    return out


def _check_stages(c: _Checker) -> tuple[dict[str, set[str]], set[str]]:
    """Check every stage; returns (columns per configured stage, names of stages that failed)."""
    from engines.stage import known_kinds, stage_class
    from flows.registry import load_stages
    try:
        load_stages()
    except Exception as e:  # noqa: BLE001 - a broken plugin module is a user error to report
        c.report.errors.append(f"cannot load the stage modules ({type(e).__name__}: {e}); check CURATE_PLUGINS")
        return {}, {s.name for s in c.cfg.stages}
    kinds = known_kinds()
    sources = source_names(c.cfg)  # ingested sources, then the derived ones rewrite stages write
    for loc, msg in derived_source_problems(c.cfg):
        c.error(loc, msg)
    written: dict[str, set[str]] = {}
    writers: dict[str, str] = {}
    broken: set[str] = set()
    for i, sc in enumerate(c.cfg.stages):
        loc = ("stages", i)
        for j, src in enumerate(sc.sources or []):
            if src not in sources:
                c.error(loc + ("sources", j), f"no source named {src!r}{did_you_mean(src, sources)} (sources: {', '.join(sources)})")
        if sc.kind not in kinds:
            hint = did_you_mean(sc.kind, kinds) or f"; known kinds: {', '.join(kinds)}"
            c.error(loc + ("kind",), f"unknown stage kind {sc.kind!r}{hint}")
            broken.add(sc.name)
            continue
        cls = stage_class(sc.kind)
        try:
            params = cls.Params.model_validate(sc.params)
            stage = cls(params)
        except ValidationError as e:
            c.pydantic_errors(loc + ("params",), e, cls.Params)
            broken.add(sc.name)
            continue
        except Exception as e:  # noqa: BLE001 - a stage rejecting its params says why
            c.error(loc + ("params",), str(e))
            broken.add(sc.name)
            continue
        gap = extras.problem(stage.requirements())
        if gap:
            c.error(loc + ("kind",), f"{sc.kind} {gap}")
        dump = params.model_dump(mode="json")
        for spec in getattr(cls, "path_params", ()):
            for sub, value in _values_at(dump, spec):
                if isinstance(value, str):
                    c.local_file(loc + ("params",) + sub, value, c.cfg.base_dir)
        for sub, value in _model_paths(params):
            c.local_file(loc + ("params",) + sub, value)
        seen = sc.sources or sources
        for spec in getattr(cls, "source_params", ()):
            for sub, value in _values_at(dump, spec):
                if value not in seen:
                    scope = "" if sc.sources is None else " among the stage's sources"
                    c.error(loc + ("params",) + sub, f"no source named {value!r}{scope}{did_you_mean(str(value), seen)} "
                                                     f"(sources: {', '.join(seen)})")
        inputs = {**getattr(stage, "implied_inputs", dict)(), **sc.inputs}  # a rewrite's routing columns
        _check_feeds(c, i, sc.name, inputs, stage.needs, written, writers, broken)
        written[sc.name] = set(stage.writes())
        for col in written[sc.name]:
            writers[col] = sc.name
    return written, broken


def _check_feeds(c: _Checker, i: int, name: str, inputs: dict[str, str], needs: tuple[str, ...],
                 written: dict[str, set[str]], writers: dict[str, str], broken: set[str]) -> None:
    """``inputs:`` entries and needed columns of stage ``i``: each needed column must come from the
    document, an ``inputs:`` entry or an earlier stage writing it."""
    for col, ref in inputs.items():
        loc = ("stages", i, "inputs", col)
        if col not in needs:
            c.error(loc, f"stage {name!r} does not read a column {col!r}; it reads {', '.join(needs)}")
            continue
        up, dot, up_col = ref.partition(".")
        if not dot or not up or not up_col:
            c.error(loc, f"{ref!r} is not of the form stage.column")
        elif up in broken:
            continue  # already reported
        elif up not in written:
            later = " (it comes later: a stage reads only from stages before it)" if any(
                s.name == up for s in c.cfg.stages) else did_you_mean(up, list(written))
            c.error(loc, f"no earlier stage named {up!r}{later}")
        elif up_col not in written[up]:
            c.error(loc, f"stage {up!r} writes no column {up_col!r}{did_you_mean(up_col, sorted(written[up]))} "
                         f"(it writes {', '.join(sorted(written[up]))})")
    missing = [col for col in needs if col not in DOCUMENT.names and col not in inputs and col not in writers]
    if missing and not broken:
        c.error(("stages", i), f"stage {name!r} needs {missing}: no document column or earlier stage provides "
                               "them (name one with stages[].inputs: {column: stage.column})")


def _check_selection(c: _Checker, written: dict[str, set[str]], broken: set[str]) -> None:
    from warehouse.selection import SelectionError, parse_selection
    available = dict(written)
    # A stage already reported as broken is taken to write whatever the selection reads from it,
    # so the rest of the expression is still checked and the broken stage is not a second problem.
    try:
        tree = ast.parse(c.cfg.release.select.strip() or "true", mode="eval")
    except SyntaxError:
        tree = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in broken:
            available.setdefault(node.value.id, set()).add(node.attr)
    try:
        parse_selection(c.cfg.release.select, available)
    except SelectionError as e:
        c.error(("release", "select"), str(e).removeprefix("release.select: "))


def _check_release_text(c: _Checker, broken: set[str]) -> None:
    """``release.text``: a chain of derived text columns, each stage reading the previous link."""
    from engines.stage import known_kinds, stage_class
    from warehouse.releasing.text import check_chain
    chain = c.cfg.release.text
    if not chain or any(e.split(".", 1)[0] in broken for e in chain):
        return
    ok = [sc for sc in c.cfg.stages if sc.name not in broken and sc.kind in known_kinds()]
    try:
        check_chain(list(chain), {sc.name: stage_class(sc.kind).text_columns for sc in ok},
                    {sc.name: sc.inputs.get("text") for sc in ok})
    except ValueError as e:
        c.error(("release", "text"), str(e))


def _check_release_plan(c: _Checker, written: dict[str, set[str]]) -> None:
    """The mixture/curriculum/anneal blocks: schema, the sources and columns they name, files."""
    from planning.curriculum import CurriculumConfig
    from planning.mixture import METHOD_REQUIRES, MixtureConfig
    rel = c.cfg.release
    sources = source_names(c.cfg)
    columns = sorted(f"{st}.{col}" for st, cols in written.items() for col in cols)
    if rel.mixture is not None:
        try:
            mix = MixtureConfig.model_validate(rel.mixture)
        except ValidationError as e:
            c.pydantic_errors(("release", "mixture"), e, MixtureConfig)
        else:
            named = {"weights": list(mix.weights or {}),
                     "max_epochs": list(mix.max_epochs) if isinstance(mix.max_epochs, dict) else [],
                     "domain_source": [mix.domain_source] if mix.domain_source else [],
                     "general_source": [mix.general_source] if mix.general_source else []}
            if mix.end_phase is not None:
                named["end_phase.upsample"] = list(mix.end_phase.upsample or {})
            for key, names in named.items():
                for src in names:
                    if src not in sources:
                        c.error(("release", "mixture", *key.split(".")), f"no source named {src!r}"
                                f"{did_you_mean(src, sources)} (sources: {', '.join(sources)})")
            gap = extras.problem(METHOD_REQUIRES.get(mix.method, {}))
            if gap:
                c.error(("release", "mixture", "method"), f"method {mix.method!r} {gap}")
            if mix.results:
                c.local_file(("release", "mixture", "results"), mix.results, c.cfg.base_dir)
            elif mix.method in ("regmix", "mixing_law", "cmr"):
                c.error(("release", "mixture", "method"), f"method {mix.method!r} needs release.mixture.results "
                                                          "(a CSV/Parquet table of proxy-run results)")
    for key in ("curriculum", "anneal"):
        block = getattr(rel, key)
        if block is None:
            continue
        try:
            cur = CurriculumConfig.model_validate(block)
        except ValidationError as e:
            c.pydantic_errors(("release", key), e, CurriculumConfig)
            continue
        if cur.column and cur.column not in columns:
            c.error(("release", key, "column"), f"no stage writes {cur.column!r}{did_you_mean(cur.column, columns)}")


def _check_sources(c: _Checker) -> None:
    from flows.ingest_plan import match_source, unmatched_message
    for i, src in enumerate(c.cfg.sources):
        try:
            matched = match_source(c.cfg, src)
        except Exception as e:  # noqa: BLE001 - unreachable storage, bad URL: report, don't crash
            c.error(("sources", i, "paths"), f"cannot list {src.paths}: {type(e).__name__}: {e}")
            continue
        for pattern in matched.unmatched:
            j = src.paths.index(pattern)
            (c.warn if src.optional else c.error)(("sources", i, "paths", j), unmatched_message(c.cfg, src, pattern))


def validate_pipeline(path: str | Path, reingest: tuple[str, ...] | list[str] = ()) -> Report:
    """Check a pipeline file (see the module docstring); never raises for a user mistake."""
    path = Path(path)
    report = Report(str(path))
    try:
        cfg = load_config(path)
    except ConfigError as e:
        report.errors.extend(line.strip() for line in str(e).splitlines()
                             if line.strip() and line.strip() != "invalid pipeline file:")
        return report
    report.cfg = cfg
    node, _ = read_config_yaml(path)
    c = _Checker(path, cfg, node, report)
    written, broken = _check_stages(c)
    _check_selection(c, written, broken)
    _check_release_text(c, broken)
    _check_release_plan(c, written)
    _check_sources(c)
    if cfg.ablation:
        from flows.ablation_step import check_ablation
        try:
            check_ablation(cfg)
        except ConfigError as e:
            report.errors.extend(f"{c.at('ablation')}: {line.strip()}" for line in str(e).splitlines()
                                 if line.strip() and line.strip() != "invalid ablation config:")
    names = [s.name for s in cfg.sources]
    for name in reingest:
        if name not in names:
            report.errors.append(f"--reingest {name}: no source of that name{did_you_mean(name, names)} "
                                 f"(sources: {', '.join(names)})")
    return report
