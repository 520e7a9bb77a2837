"""Derived sources: where the documents a ``rewrite`` stage creates live, and their records.

A ``rewrite`` stage (rewriting/) routes parent documents to methods; each route ``R`` of a stage
reading source ``S`` writes the **derived source** ``S.R`` (``wiki_en.wrap``): raw shards in the
DOCUMENT schema under ``raw/S.R/<rewrite run>/``, with completion markers shaped like ingest
markers, so every later stage, the release and the catalog treat it as a source. The names
follow from the pipeline file alone, so validation, the flow and the release agree on them
without running anything (``source_names``).

A derived document keeps its parent's ``url``, ``domain``, ``crawl_date`` and ``license``; its
``src_file``/``src_offset`` are the parent's raw shard (relative to the lake) and row; its
``meta`` is ``{"lineage": {...}}`` (LINEAGE_FIELDS), which travels into release shards and
exports unchanged. Every model reply, kept or dropped, is also a row of REWRITE_OUTPUTS (a
Parquet file per derived marker, loaded into the catalog table ``rewrite_outputs``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from schemas.names import MAX_NAME_LEN

if TYPE_CHECKING:
    from schemas.config import PipelineConfig, StageConfig

DERIVING_KINDS = ("rewrite",)

# One row per candidate (a model reply, or for ProX the programs of one parent), kept or not.
REWRITE_OUTPUTS = pa.schema([
    pa.field("id", pa.string()),  # the derived document's id (also for dropped candidates)
    pa.field("status", pa.string()),  # kept | dropped | error
    pa.field("reason", pa.string()),  # why not kept (postfilter.py and the methods)
    pa.field("source", pa.string()),  # derived source
    pa.field("parent_id", pa.string()),
    pa.field("parent_source", pa.string()),
    pa.field("parent_shard", pa.string()),  # relative to the lake root
    pa.field("parent_row", pa.int64()),
    pa.field("stage", pa.string()),
    pa.field("route", pa.string()),
    pa.field("method", pa.string()),
    pa.field("family", pa.string()),  # style or prompt family
    pa.field("prompt_id", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("model", pa.string()),
    pa.field("backend", pa.string()),
    pa.field("sampling", pa.string()),  # JSON: temperature, top_p, max_tokens, seed
    pa.field("seed", pa.int64()),
    pa.field("segment_index", pa.int32()),
    pa.field("segment_start", pa.int64()),  # character span in the parent text
    pa.field("segment_end", pa.int64()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("words", pa.int64()),  # whitespace words of the derived text (0 when dropped)
    pa.field("finish_reason", pa.string()),
    pa.field("cached", pa.bool_()),  # every reply came from the result cache
    pa.field("detail", pa.string()),  # JSON: method details (ProX: removed lines, problems)
    pa.field("reply", pa.large_string()),  # the raw reply of a dropped candidate (first 4,000 chars)
    pa.field("ingest_run", pa.string()),  # the derived marker this row belongs to
    pa.field("file_index", pa.int64()),
    pa.field("run_id", pa.string()),
])

LINEAGE_FIELDS = ("parent_id", "parent_source", "parent_shard", "parent_row", "stage", "route", "method", "family",
                  "prompt", "generator", "segment")


def route_names(sc: StageConfig) -> list[str]:
    """The route names of a rewrite stage's params (``name``, else ``method``), as written."""
    routes = sc.params.get("routes") if isinstance(sc.params, dict) else None
    out = []
    for r in routes if isinstance(routes, list) else []:
        if isinstance(r, dict):
            name = r.get("name") or r.get("method")
            if isinstance(name, str) and name:
                out.append(name)
    return out


def derived_sources_of(cfg: PipelineConfig, sc: StageConfig) -> list[str]:
    """The derived sources one rewrite stage writes: ``<source>.<route>`` for each source it reads."""
    if sc.kind not in DERIVING_KINDS:
        return []
    real = [s.name for s in cfg.sources]
    inputs = [s for s in (sc.sources or real) if s in real]
    return [f"{s}.{r}" for s in inputs for r in route_names(sc)]


def derived_sources(cfg: PipelineConfig) -> list[str]:
    """Every derived source of the pipeline, in stage then source then route order."""
    return list(dict.fromkeys(d for sc in cfg.stages for d in derived_sources_of(cfg, sc)))


def source_names(cfg: PipelineConfig) -> list[str]:
    """The pipeline's sources: those it ingests, then the derived ones its rewrite stages write."""
    return [s.name for s in cfg.sources] + derived_sources(cfg)


def derived_source_problems(cfg: PipelineConfig) -> list[tuple[tuple[Any, ...], str]]:
    """(config location, message) for derived names that are too long, clash with a source, or
    are written by two stages."""
    real = {s.name for s in cfg.sources}
    seen: dict[str, str] = {}
    out: list[tuple[tuple[Any, ...], str]] = []
    for i, sc in enumerate(cfg.stages):
        for name in derived_sources_of(cfg, sc):
            loc = ("stages", i, "params", "routes")
            if len(name) > MAX_NAME_LEN:
                out.append((loc, f"derived source {name!r} is longer than {MAX_NAME_LEN} characters; "
                                 "give the route a shorter `name`"))
            if name in real:
                out.append((loc, f"derived source {name!r} has the name of an ingested source"))
            elif name in seen and seen[name] != sc.name:
                out.append((loc, f"derived source {name!r} is also written by stage {seen[name]!r}"))
            seen[name] = sc.name
        for src in sc.sources or []:
            if sc.kind in DERIVING_KINDS and src not in real:
                out.append((("stages", i, "sources"), f"a rewrite stage reads ingested sources only; {src!r} is not one"))
    return out
