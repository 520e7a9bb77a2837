"""The fate of every document of a release: kept, or dropped/quarantined with the stage and reason.

A release records counts per (source, stage, reason), not the fate of each document; the report,
``curate sample`` and ``curate show`` need the documents behind those counts: one small row per
document (id, source, raw shard, row, fate, stage, reason) in ``reports/NAME/VERSION/fates.parquet``.
The release step writes that file as it decides each row (warehouse/releasing/fates_file.py).
Where it is missing (a release made before, or one whose run stopped after the commit) this module
replays the release's own decision (warehouse.release: the same selection, the same attribution
to the first failing filter in pipeline order) shard by shard and writes the same rows. A release
never changes, so neither does the file: it is computed once and reused.

Memory: a chunk of a raw shard and its annotations at a time (``shard_chunks``). Cost of a replay:
one pass over the release's raw shards (text included, as the release step reads it), then reads
of ~40 bytes per document.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from engines import storage
from warehouse.releasing.fates import Reads, decide, shard_chunks
from warehouse.releasing.fates_file import FATES_FILE as FATES_FILE
from warehouse.releasing.fates_file import FATES_SCHEMA, catalog_reasons
from warehouse.releasing.fates_file import fate_rows as _rows
from warehouse.releasing.text import release_text
from warehouse.report.context import ReleaseContext
from warehouse.report.io import read_rows, write_parquet
from warehouse.selection import Selection, SelectionError, parse_selection


def release_selection(ctx: ReleaseContext) -> Selection:
    return parse_selection(ctx.selection, {s.name: set(s.columns) for s in ctx.stages})


def where_selection(ctx: ReleaseContext, expr: str) -> Selection:
    """Parse a ``--where`` expression (the selection language) against the release's stages."""
    try:
        return parse_selection(expr, {s.name: set(s.columns) for s in ctx.stages})
    except SelectionError as e:
        raise SelectionError(str(e).replace("release.select:", "--where:", 1)) from None


def decided_chunks(ctx: ReleaseContext, raw: str, selection: Selection | None = None,
                   extra: Selection | None = None) -> Iterator[pl.DataFrame]:
    """A raw shard, a chunk at a time (in shard order), with the stage columns the release reads
    (``stage.column``; plus those ``extra``, a ``--where``, names) and ``_fate``/``_stage``/``_reason``,
    decided exactly as the release decided (warehouse.releasing.fates, with the release's ``text``
    chain). Columns a stage does not write for this source are nulls."""
    selection = selection or release_selection(ctx)
    source = ctx.lake.source_of(raw)
    chain = ctx.text_chain
    wanted = selection.columns | (extra.columns if extra else set())
    reads = Reads.of(ctx.stages, wanted, selection.stages, chain)
    for df, missing in shard_chunks(raw, source, ctx.stages, reads, ctx.lake.annotation_path):
        for col in wanted | set(chain):
            if col not in df.columns:
                df = df.with_columns(pl.lit(None, pl.String if col in chain else pl.Null).alias(col))
        df = decide(df, source, ctx.stages, missing, selection.expr, reads, release_text(chain))
        yield catalog_reasons(df)  # reasons as the catalog's drop_reasons spell them


def decided_shard(ctx: ReleaseContext, raw: str, selection: Selection | None = None,
                  extra: Selection | None = None) -> pl.DataFrame:
    """``decided_chunks`` of the whole shard as one frame."""
    return pl.concat(list(decided_chunks(ctx, raw, selection, extra)), how="vertical_relaxed")


def fates_path(ctx: ReleaseContext) -> str:
    return f"{ctx.report_dir}/{FATES_FILE}"


def ensure_fates(ctx: ReleaseContext, progress: Callable[[int, int], None] | None = None) -> str:
    """The path of the release's fates file (the release step writes it), computing it by replay
    first if it is not there."""
    path = fates_path(ctx)
    if storage.exists(path):
        return path
    selection = release_selection(ctx)
    shards = ctx.raw_shards

    def tables() -> Iterator[pa.Table]:
        for i, raw in enumerate(shards):
            offset = 0
            for chunk in decided_chunks(ctx, raw, selection):
                yield _rows(chunk, raw, offset)
                offset += chunk.height
            if progress:
                progress(i + 1, len(shards))
    write_parquet(path, FATES_SCHEMA, tables())
    return path


@dataclass
class Match:
    """A document chosen by a sample: where it is and why it is where it is."""

    id: str
    source: str
    raw: str
    row: int
    fate: str
    stage: str | None
    reason: str | None
    text: str = ""


def where_matches(ctx: ReleaseContext, expr: str, sources: list[str] | None = None) -> Iterator[pa.Table]:
    """Per raw shard, the fates rows of the documents for which ``expr`` holds."""
    extra = where_selection(ctx, expr)
    selection = release_selection(ctx)
    for raw in ctx.raw_shards:
        if sources and ctx.lake.source_of(raw) not in sources:
            continue
        offset = 0
        for df in decided_chunks(ctx, raw, selection, extra):
            hit = df.with_row_index("_r", offset=offset).filter(extra.expr)
            offset += df.height
            if hit.height:
                yield _rows(hit, raw).set_column(3, "row", pa.array(hit.get_column("_r").cast(pl.Int64).to_arrow()))


def read_texts(rows: list[tuple[str, int]], chars: int | None = None,
               known: dict[tuple[str, int], str] | None = None) -> dict[tuple[str, int], str]:
    """Texts of (raw shard, row) pairs, reading only the text column of the shards concerned,
    one shard at a time; ``chars`` cuts each text to its first characters. ``known``: texts
    already in hand (the release pass kept them: releasing/report_texts.py); only the other rows
    are read."""
    out: dict[tuple[str, int], str] = {}
    by_file: dict[str, list[int]] = {}
    for raw, row in rows:
        if known is not None and (raw, row) in known:
            t = known[(raw, row)]
            out[(raw, row)] = t[:chars] if chars else t
            continue
        by_file.setdefault(raw, []).append(row)
    for raw, wanted in by_file.items():
        for r, got in read_rows(raw, wanted, ["text"]).items():
            t = got.get("text") or ""
            out[(raw, r)] = t[:chars] if chars else t
    return out


def as_matches(rows: list[dict[str, Any]], chars: int | None = None,
               known: dict[tuple[str, int], str] | None = None) -> list[Match]:
    texts = read_texts([(r["raw"], int(r["row"])) for r in rows], chars, known)
    return [Match(r["id"], r["source"], r["raw"], int(r["row"]), r["fate"], r.get("stage"), r.get("reason"),
                  texts.get((r["raw"], int(r["row"])), "")) for r in rows]
