"""Was a release decontaminated against the ablation's evaluation sets?

A held-out score means nothing if the release contains the held-out text. Two checks, per
release and evaluation file (held-out files and the data files of each multiple-choice task):

1. **Provenance**: the release's pipeline ran a ``decontaminate`` stage whose fitted artifact
   (``<lake>/artifacts/<stage key>/benchmarks.json``) lists this exact file (same name and
   contents: the stage's own fingerprint), and the release's selection reads that stage's
   ``keep``. So the documents it flagged were dropped.
2. **Measured**: the pipeline's own ``decontaminate`` stage (``filters.decontam``), fitted on the
   evaluation file here, is applied to the release's text; ``contaminated_docs`` counts the
   release documents that share a 13-word n-gram with it. Cost: one pass over the release's
   text (vectorised hashing, about the speed of the stage in a pipeline run).

``decontamination: require`` (the default) refuses to train when either check fails for any
release, naming the file and what to add to the pipeline; ``warn`` logs the same and records
``decontaminated: false`` with the counts in the results; ``off`` skips both checks (recorded).
"""
from __future__ import annotations

import ast
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ablations.data import AblationError, ReleaseRef


@dataclass(frozen=True)
class EvalFile:
    """One file an evaluation reads: its set's name, path, and the fields that hold text."""

    name: str
    path: str
    text_fields: tuple[str, ...] | None  # None: every string or list-of-strings field


@dataclass
class Finding:
    release: str
    eval_set: str
    path: str
    provenance: bool  # a decontaminate stage in the release's selection covered this file
    stage: str | None  # that stage's name
    contaminated_docs: int | None  # measured overlap (None when not measured)

    @property
    def clean(self) -> bool:
        return self.provenance and not self.contaminated_docs


def selection_columns(select: str) -> set[str]:
    """``stage.column`` names a selection expression reads (parsed, never evaluated)."""
    try:
        tree = ast.parse((select or "true").strip(), mode="eval")
    except SyntaxError:
        return set()
    return {f"{n.value.id}.{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}


def decontam_stages(release: ReleaseRef, lake_root: str) -> dict[str, list[dict[str, Any]]]:
    """Stage name -> benchmarks (name, path, sha256) of each decontaminate stage the release's
    selection applies (its ``keep`` column is read by the selection)."""
    stages = (release.manifest.get("inputs") or {}).get("stages") or {}
    used = selection_columns(str(release.manifest.get("selection", "")))
    out: dict[str, list[dict[str, Any]]] = {}
    for name, key in stages.items():
        info = Path(lake_root) / "artifacts" / str(key) / "benchmarks.json"
        if f"{name}.keep" in used and info.is_file():
            out[name] = json.loads(info.read_text()).get("benchmarks", [])
    return out


def _measured(release: ReleaseRef, files: list[EvalFile], workdir: str, ngram: int) -> list[int]:
    """Release documents sharing an n-gram with each file (one read of the release's text)."""
    from engines.stage import StageContext
    from filters.decontam import BenchmarkSpec, Decontaminate
    from warehouse.export.release_reader import iter_shards, open_release

    stages = []
    for k, ef in enumerate(files):
        fields = list(ef.text_fields) if ef.text_fields else _text_fields(ef.path)
        stage = Decontaminate(Decontaminate.Params(
            benchmarks=[BenchmarkSpec(name=ef.name, path=ef.path, text_field=fields)], ngram=ngram))
        art = Path(workdir) / f"{k}"
        art.mkdir(parents=True, exist_ok=True)
        stage.fit(iter(()), str(art))
        stage.setup(StageContext(artifact_dir=str(art)))
        stages.append(stage)
    hits = [0] * len(files)
    for _, table in iter_shards(open_release(release.dir), columns=["text"], verify=False):
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        for off in range(0, frame.height, 4096):
            part = frame.slice(off, 4096)
            for k, stage in enumerate(stages):
                hits[k] += int((~stage.transform(part).get_column("keep")).sum())
    return hits


def _text_fields(path: str) -> list[str]:
    """String and list-of-string fields of a JSONL/Parquet file (for multiple-choice data)."""
    from ablations.tokenizer import _decompressed

    frame = pl.read_parquet(path, n_rows=100) if path.endswith(".parquet") else pl.read_ndjson(
        _decompressed(path), infer_schema_length=None).head(100)
    fields = [c for c, t in frame.schema.items() if t == pl.String or (isinstance(t, pl.List) and t.inner == pl.String)]
    if not fields:
        raise AblationError(f"{path}: no text fields to check for contamination")
    return fields


def check_releases(releases: list[ReleaseRef], files: list[EvalFile], lake_root: str, policy: str,
                   log: Callable[[str], None] = print, ngram: int = 13) -> list[Finding]:
    """Run both checks for every (release, eval file); raise under ``require`` if any fails."""
    if policy == "off" or not files:
        return []
    from engines.fingerprints import content_sha256

    prints = {ef.path: content_sha256(Path(ef.path)) for ef in files}
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="curate-ablate-decontam-") as tmp:
        for i, rel in enumerate(releases):
            stages = decontam_stages(rel, lake_root)
            counts = _measured(rel, files, f"{tmp}/{i}", ngram)
            for ef, n in zip(files, counts):
                stage = next((s for s, benches in stages.items()
                              if any(b.get("sha256") == prints[ef.path] for b in benches)), None)
                findings.append(Finding(rel.label, ef.name, ef.path, stage is not None, stage, n))
    bad = [f for f in findings if not f.clean]
    msgs = []
    for f in bad:
        why = []
        if not f.provenance:
            why.append("its pipeline did not decontaminate against this file (no decontaminate stage read by "
                       f"release.select lists it: add {{name: {f.eval_set}, path: {f.path}, text_field: ...}} to a "
                       "decontaminate stage's benchmarks and `and <stage>.keep` to release.select)")
        if f.contaminated_docs:
            why.append(f"{f.contaminated_docs} of its documents share a {ngram}-word n-gram with it")
        msgs.append(f"release {f.release} vs eval set {f.eval_set!r}: " + "; ".join(why))
    if msgs and policy == "require":
        more = f" (and {len(msgs) - 1} more)" if len(msgs) > 1 else ""
        raise AblationError(msgs[0] + more + "; or set decontamination: warn in the ablation config to train anyway")
    for m in msgs:
        log("warning: " + m)
    return findings


def as_records(findings: list[Finding]) -> list[dict[str, Any]]:
    return [{**asdict(f), "clean": f.clean} for f in findings]
