"""What the report needs to know about one release: its manifest and its stages, in pipeline order.

A manifest names each stage's key (``inputs.stages``) but not the pipeline order, the columns a
stage writes or the sources it applies to; the release's drop attribution depends on all three.
The flow knows them and saves them beside the report as ``reports/NAME/VERSION/context.json``
(``save_context``). A release made before that file existed gets them from its pipeline file
(the caller passes them), or, as a last resort, from the lake itself (``infer_stages``: columns
from the annotation files' schema, order from the selection text).

Manifests gain fields over time (text transforms, gates): everything here reads them with
``.get`` and defaults.
"""
from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq

from engines import storage
from warehouse.lake import Lake
from warehouse.release import ERROR_COLUMN, StageInfo
from warehouse.releasing.fates_file import report_dir as report_dir  # its home before the release wrote fates
from warehouse.releasing.publish import REJECTED

CONTEXT_FILE = "context.json"
REPORT_FILE = "report.html"


def rejected_record(lake: Lake, name: str, version: str) -> str:
    """``releases/NAME/_rejected/VERSION.json``: what the release step knew of a release its gates stopped."""
    return f"{lake.release_dir(name)}/{REJECTED}/{version}.json"


def read_manifest(lake: Lake, name: str, version: str, rejected: bool = False) -> dict[str, Any]:
    """A release's manifest; ``rejected``: the record of a release its gates stopped, as a manifest
    without shards (they were deleted)."""
    path = rejected_record(lake, name, version) if rejected else f"{lake.release_dir(name, version)}/manifest.json"
    if not storage.exists(path):
        what = "rejected release" if rejected else "release"
        raise FileNotFoundError(f"no {what} {name}/{version} in {lake.root} (see `curate releases`)")
    fs, p = storage.fs_and_path(path)
    with fs.open(p, "r") as f:
        manifest = json.load(f)
    if rejected:
        manifest["shards"] = []
    return manifest


@dataclass
class ReleaseContext:
    """A release as the report sees it."""

    lake: Lake
    manifest: dict[str, Any]
    stages: list[StageInfo]  # pipeline order
    notes: list[str] = field(default_factory=list)  # what had to be inferred
    rejected: bool = False  # stopped by its gates: a record without shards (warehouse/report/rejected.py)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def selection(self) -> str:
        return str(self.manifest.get("selection") or "true")

    @property
    def text_chain(self) -> list[str]:
        text = self.manifest.get("text")
        return list(text.get("chain") or []) if isinstance(text, dict) else []

    @property
    def sources(self) -> list[str]:
        return list((self.manifest.get("sources") or {}).keys())

    @property
    def raw_shards(self) -> list[str]:
        """Absolute paths of the raw shards the release read, in lake order."""
        rel = (self.manifest.get("inputs") or {}).get("raw_shards")
        if rel is not None:
            return [f"{self.lake.root}/{p}" for p in rel]
        return [p for s in self.sources for p in self.lake.raw_shards(s)]

    @property
    def release_dir(self) -> str:
        return self.lake.release_dir(self.name, self.version)

    @property
    def shard_files(self) -> list[str]:
        return [f"{self.release_dir}/{s['file']}" for s in self.manifest.get("shards") or []]

    @property
    def report_dir(self) -> str:
        return report_dir(self.lake, self.name, self.version, self.rejected)

    def stage(self, name: str) -> StageInfo | None:
        return next((s for s in self.stages if s.name == name), None)

    def annotation_files(self, stage: StageInfo) -> list[tuple[str, str, str]]:
        """(source, raw shard, annotation file) of a stage over the release's raw shards, where the file exists."""
        out = []
        for raw in self.raw_shards:
            src = self.lake.source_of(raw)
            ann = self.lake.annotation_path(stage.key, raw)
            if stage.applies_to(src) and storage.exists(ann):
                out.append((src, raw, ann))
        return out


def save_context(ctx: ReleaseContext) -> None:
    """Write the stages (pipeline order, keys, columns, sources) beside the report."""
    body = json.dumps({"release": ctx.ref, "stages": [asdict(s) for s in ctx.stages]}, indent=1, sort_keys=True)
    from warehouse.report.io import write_bytes
    write_bytes(f"{ctx.report_dir}/{CONTEXT_FILE}", body.encode())


def load_context(lake: Lake, name: str, version: str, stages: list[StageInfo] | None = None,
                 rejected: bool = False) -> ReleaseContext:
    """The release ``name/version`` with its stages: ``stages`` if given (the flow, or a pipeline
    file), else the saved context.json, else inferred from the lake. ``rejected``: the release its
    gates stopped (read from its ``_rejected`` record)."""
    manifest = read_manifest(lake, name, version, rejected)
    keys: dict[str, str] = dict((manifest.get("inputs") or {}).get("stages") or {})
    if stages is None:
        path = f"{report_dir(lake, name, version, rejected)}/{CONTEXT_FILE}"
        if storage.exists(path):
            fs, p = storage.fs_and_path(path)
            with fs.open(p, "r") as f:
                stages = [StageInfo(**s) for s in json.load(f)["stages"]]
    ctx = ReleaseContext(lake, manifest, [], rejected=rejected)
    if rejected:
        ctx.notes.append("REJECTED by its gates: nothing was published, and the shards it wrote were deleted. The "
                         "numbers are those of the release it would have been; the mixture and curriculum sections "
                         "(read from shards) are empty, and the changes since the parent count the documents its "
                         "selection kept.")
    if stages is not None:
        # The manifest's keys win: a pipeline file may have moved on since this release.
        ctx.stages = [StageInfo(s.name, keys.get(s.name, s.key), list(s.columns), s.sources) for s in stages
                      if not keys or s.name in keys]
        missing = [n for n in keys if n not in {s.name for s in ctx.stages}]
    else:
        missing = list(keys)
    if missing:
        ctx.stages += infer_stages(ctx, {n: keys[n] for n in missing})
        ctx.notes.append(f"stages inferred from the lake (pipeline order guessed from the selection): {missing}")
    return ctx


def infer_stages(ctx: ReleaseContext, keys: dict[str, str]) -> list[StageInfo]:
    """Stages known only by name and key: columns from an annotation file's schema, sources from
    where annotation files exist, order by first mention in the selection (then by name)."""
    sel = ctx.selection
    order = sorted(keys, key=lambda n: (sel.find(f"{n}.") if f"{n}." in sel else len(sel) + 1, n))
    out = []
    for name in order:
        key = keys[name]
        sources: list[str] = []
        columns: list[str] = []
        for raw in ctx.raw_shards:
            ann = ctx.lake.annotation_path(key, raw)
            if storage.exists(ann):
                src = ctx.lake.source_of(raw)
                if src not in sources:
                    sources.append(src)
                if not columns:
                    fs, p = storage.fs_and_path(ann)
                    with fs.open(p, "rb") as f:
                        columns = [c for c in pq.read_schema(f).names if c not in ("id", ERROR_COLUMN)]
        all_sources = sorted(sources) == sorted(ctx.sources)
        out.append(StageInfo(name, key, columns, None if all_sources else sources))
    return out


@dataclass(frozen=True)
class Threshold:
    """A comparison of a stage column with a number in the selection, e.g. ``quality.score >= 0.5``."""

    column: str  # stage.column
    op: str
    value: float


_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def thresholds(selection: str) -> list[Threshold]:
    """Every ``stage.column OP number`` (either side) in a selection expression. The expression
    is parsed, never evaluated; one that does not parse has no thresholds."""
    try:
        tree = ast.parse(selection.strip() or "true", mode="eval")
    except SyntaxError:
        return []

    def column(node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return f"{node.value.id}.{node.attr}"
        return None

    def number(node: ast.AST) -> float | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = number(node.operand)
            return -v if v is not None else None
        return None

    out: list[Threshold] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            sym = _OPS.get(type(op))
            if sym is not None:
                col, val = column(left), number(right)
                if col is not None and val is not None:
                    out.append(Threshold(col, sym, val))
                col, val = column(right), number(left)
                if col is not None and val is not None:
                    out.append(Threshold(col, _FLIP[sym], val))
            left = right
    return list(dict.fromkeys(out))
