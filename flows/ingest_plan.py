"""Which input files of a source a run ingests, and which earlier ingests they supersede.

A file is ingested when no live ingest has its fingerprint (path, size, modification time or
ETag, and the source's reader config: readers.ingest.file_fingerprint). When the file was
ingested before under another fingerprint (it changed, or the reader config did), the new ingest
supersedes the old one (warehouse.supersede): the old rows stop counting once the new ingest's
marker is written. ``--reingest SOURCE`` ingests every file of the source again and supersedes
every live ingest of it, including files its paths no longer match.

A path or glob matching nothing is an error (``SourceMatchError``) unless the source says
``optional: true``; then it is a warning. No Prefect here: ``curate validate`` uses the same
matching before any flow starts.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engines import storage
from readers.ingest import IngestFileTask, file_fingerprint, reader_config
from schemas.config import PipelineConfig, SourceConfig, stable_hash
from warehouse.lake import Lake


class SourceMatchError(ValueError):
    """A required source whose paths match no file; the message says what to change."""


@dataclass
class SourceFiles:
    files: list[str] = field(default_factory=list)  # sorted, unique
    unmatched: list[str] = field(default_factory=list)  # patterns (as written) that matched nothing


def match_source(cfg: PipelineConfig, source: SourceConfig) -> SourceFiles:
    """The files a source's paths and globs match now (relative paths against the pipeline file)."""
    out = SourceFiles()
    found: set[str] = set()
    for pattern in source.paths:
        hits = storage.glob(cfg.resolve(pattern))
        if not hits:
            out.unmatched.append(pattern)
        found.update(hits)
    out.files = sorted(found)
    return out


def unmatched_message(cfg: PipelineConfig, source: SourceConfig, pattern: str) -> str:
    resolved = cfg.resolve(pattern)
    where = pattern if resolved == pattern else f"{pattern} ({resolved})"
    if source.optional:
        return f"source {source.name}: nothing matches {where}; the source is optional, so the run goes on"
    return (f"source {source.name}: nothing matches {where}; fix sources[].paths, or mark the source "
            "`optional: true` if it may be empty")


def _marker_key(marker: dict) -> str:
    return f"{marker['ingest_run']}/{int(marker['file_index']):05d}"


def plan_source_ingest(cfg: PipelineConfig, lake: Lake, source: SourceConfig, run_id: str, code_version: str,
                       reingest: bool = False, warn: Callable[[str], object] = print) -> list[IngestFileTask]:
    """The ingest tasks of one source for this run (empty when nothing is new)."""
    matched = match_source(cfg, source)
    for pattern in matched.unmatched:
        if not source.optional:
            raise SourceMatchError(unmatched_message(cfg, source, pattern))
        warn(unmatched_message(cfg, source, pattern))
    live = lake.ingest_markers(source.name)
    done = {m.get("fingerprint") for m in live}
    fps = [file_fingerprint(f, source) for f in matched.files]
    new = fps if reingest else [fp for fp in fps if fp["fingerprint"] not in done]
    if not new:
        return []
    by_file: dict[str, list[str]] = {}
    for m in live:
        by_file.setdefault(m["file"], []).append(_marker_key(m))
    supersede = {fp["path"]: sorted(by_file.get(fp["path"], [])) for fp in new}
    if reingest:  # live ingests of files no longer matched are replaced too: the source starts afresh
        gone = sorted(k for f, keys in by_file.items() if f not in supersede for k in keys)
        if gone:
            supersede[new[0]["path"]] = sorted(supersede[new[0]["path"]] + gone)
    _explain(source, live, new, supersede, reingest, warn)
    old = sorted(k for keys in supersede.values() for k in keys)
    # Same new files + same config + same code (+ same superseded ingests) => same ingest run, so a
    # re-run resumes it; a run that replaces other ingests never reuses an old run's folder.
    ident: dict = {"source": source.model_dump(mode="json"), "files": [f["fingerprint"] for f in new],
                   "code": code_version}
    if old:
        ident["supersedes"] = old
    ingest_run = "ing-" + stable_hash(ident)[:12]
    return [IngestFileTask(source=source, file=fp["path"], file_index=i, out_dir=lake.raw_dir(source.name, ingest_run),
                           quarantine_dir=lake.quarantine_dir(ingest_run, source.name), ingest_run=ingest_run,
                           run_id=run_id, shard_bytes=cfg.executor.shard_bytes, fingerprint=fp["fingerprint"],
                           supersedes=tuple(supersede[fp["path"]]))
            for i, fp in enumerate(new)]


def _explain(source: SourceConfig, live: list[dict], new: list[dict], supersede: dict[str, list[str]],
             reingest: bool, warn: Callable[[str], object]) -> None:
    """One line saying which earlier ingests this run replaces, and why."""
    replaced = sum(len(v) for v in supersede.values())
    if not replaced:
        return
    if reingest:
        why = "--reingest"
    else:
        reader = reader_config(source)
        earlier = [m for m in live if m["file"] in supersede]
        reasons = sorted({"the input files changed" if m.get("reader") == reader
                          else "the reader config changed" if "reader" in m
                          else "the earlier ingest did not record its reader config" for m in earlier})
        why = "; ".join(reasons)
    warn(f"source {source.name}: ingesting {len(new)} file(s) again ({why}); {replaced} earlier ingest(s) of them "
         "are superseded and no longer count (they stay in the lake, see table superseded_ingests)")
