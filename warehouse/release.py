"""Build an immutable, versioned release from raw shards and their annotations, and publish it.

For every raw shard of the configured sources, in lake order, the release step joins the shard
with the annotation columns it reads (row-aligned, no key join), resolves the text it carries
(``release.text``, warehouse/releasing/text.py), decides each row's fate and accounts for it
(warehouse/releasing/fates.py). Kept rows become ``shard-000000.parquet``... in the configured
order, each at most ``shard_rows`` rows and ``shard_bytes`` of text (releasing/writer.py). The
gates then judge the finished release (releasing/gates.py); if they pass (or the run accepts
them), ``manifest.json`` is written last as the commit record and ``LATEST`` points at it
(releasing/publish.py). Each row's fate also goes to the report's per-document fates file, moved
beside the report after the commit (releasing/fates_file.py). A crash at any step leaves nothing
a reader sees; the next run cleans the leftovers and writes the same release.

The version is ``<UTC date>-<6 hex of the content hash>``, where the content hash covers the
release config (gates aside), the selection, the stage keys, the input shards (path and size) and
the code version. If a committed release with the same content hash exists, it is reused:
re-running after a crash, or on a night with no new input, never makes a second copy. Token
counts are whitespace-separated words until a tokenizer is configured (releasing/tokens.py).

Named fault points (``CURATE_FAULT``, engines/faults.py), in order: ``release:prepared``,
``release:staged`` (planned releases), ``release:shard_written`` (after each shard),
``release:shards_written``, ``release:manifest_written``, ``release:latest_written``.

Cost: one streaming pass over the kept text; a planned order adds an external bucket sort (two
more passes over the kept text on local scratch disk; memory: one raw shard plus one bucket).
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engines import storage
from engines.faults import fault_point
from schemas.config import PipelineConfig, stable_hash
from schemas.derived import source_names
from schemas.documents import DOCUMENT
from warehouse.lake import Lake
from warehouse.releasing import gates, publish
from warehouse.releasing.fates import ERROR_COLUMN, Accounting, Reads, StageInfo, blank_texts, decide, shard_parts
from warehouse.releasing.fates_file import FATES_FILE, FatesSink, report_dir
from warehouse.releasing.overlap import Behind, read_ahead
from warehouse.releasing.report_texts import PickedTexts
from warehouse.releasing.text import TextStats, release_text
from warehouse.releasing.tokens import count_tokens_arrow
from warehouse.releasing.writer import RELEASE_SCHEMA, ShardWriter, write_in_order
from warehouse.selection import parse_selection

__all__ = ["ERROR_COLUMN", "RELEASE_SCHEMA", "StageInfo", "build_release", "content_hash", "find_release",
           "latest_version"]

PlanFn = Callable[[dict[str, pl.DataFrame]], tuple[pl.DataFrame, dict[str, Any]]]


def content_hash(cfg: PipelineConfig, stages: list[StageInfo], raw_shards: list[str], lake: Lake, code_version: str) -> str:
    inputs = []
    for path in raw_shards:
        fs, p = storage.fs_and_path(path)
        inputs.append([path[len(lake.root):], fs.info(p)["size"]])
    return stable_hash({
        "release": cfg.release.model_dump(mode="json", exclude={"gates"}),
        "stages": [[s.name, s.key, s.sources] for s in stages],
        "inputs": inputs,
        "code_version": code_version,
    })


def curation_hash(cfg: PipelineConfig) -> str:
    """The configuration without its gates: releases of equal curation hash are comparable nights."""
    dump = cfg.model_dump(mode="json")
    dump["release"].pop("gates", None)
    return stable_hash(dump)[:12]


def find_release(lake: Lake, name: str, chash: str) -> dict[str, Any] | None:
    """The committed release of ``name`` with this content hash, if any."""
    return publish.find_release(lake.release_dir(name), chash)


def latest_version(lake: Lake, name: str) -> str | None:
    """The newest committed version of ``name`` (``LATEST`` verified against the manifests)."""
    return publish.latest_version(lake.release_dir(name))


class _Scratch:
    """Local scratch space for a planned release (staged rows, sort buckets): beside the
    release on a local lake (so a crash leaves it where the next run cleans it), else in the
    system's temporary folder."""

    def __init__(self, lake: Lake, name: str, version: str):
        fs, _ = storage.fs_and_path(lake.root)
        if "://" not in lake.root:
            self.path = f"{lake.release_dir(name)}/{publish.SCRATCH}{version}"
            fs.makedirs(self.path, exist_ok=True)
        else:  # a killed run's scratch for this version is stale: the lake lock allows one writer
            for old in Path(tempfile.gettempdir()).glob(f"curate-release-{version}-*"):
                shutil.rmtree(old, ignore_errors=True)
            self.path = tempfile.mkdtemp(prefix=f"curate-release-{version}-")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def build_release(cfg: PipelineConfig, lake: Lake, stages: list[StageInfo], run_id: str, code_version: str,
                  ingest_quarantine: dict[str, int] | None = None, planner: PlanFn | None = None,
                  plan_columns: tuple[str, ...] = (), accept_gates: bool = False,
                  optional_sources: Collection[str] = (), picked: PickedTexts | None = None
                  ) -> tuple[dict[str, Any], bool]:
    """Write, judge and publish the release (or find the same one); returns (manifest, created).

    Without ``planner`` the kept rows are written in lake order as they stream by. With one
    (mixture sampling, curriculum or a seeded shuffle: see planning.release_plan), kept rows are
    staged per shard, the planner gets per-source frames of (``_file``, ``_row``, ``id``,
    ``n_tokens`` and ``plan_columns``) and returns the included copies in training order, and
    DuckDB fetches the texts in that order out of core. Raises ``gates.GateFailed`` (after
    recording why under ``_rejected/``) when a gate fails and ``accept_gates`` is false.
    ``picked``: raw rows whose texts the report will show, kept as the pass goes by them
    (releasing/report_texts.py).
    """
    if planner is None and cfg.release.order != "ingest":
        raise ValueError(f"release.order {cfg.release.order!r} needs a planner (see planning.release_plan)")
    rel = cfg.release
    root = lake.release_dir(rel.name)
    raw_shards = [p for s in source_names(cfg) for p in lake.raw_shards(s)]  # ingested, then derived sources
    chash = content_hash(cfg, stages, raw_shards, lake, code_version)
    existing = find_release(lake, rel.name, chash)
    if existing is not None:
        publish.clean_leftovers(root)
        publish.repair_latest(root)
        return existing, False
    version = f"{datetime.now(UTC):%Y-%m-%d}-{chash[:6]}"
    out_dir = publish.prepare(root, version, chash)
    fault_point("release:prepared")
    scratch = _Scratch(lake, rel.name, version)  # planned rows and the fates file; gone whatever happens
    try:
        fates = FatesSink(f"{scratch.path}/{FATES_FILE}")
        try:
            writer = ShardWriter(out_dir, rel.shard_rows, rel.shard_bytes)
            acc, text_stats, plan_extras, released = _write(cfg, lake, stages, raw_shards, writer, planner,
                                                            plan_columns, scratch.path, fates, picked)
        finally:
            fates.close()
        manifest = _manifest(cfg, lake, stages, run_id, code_version, raw_shards, chash, version, writer, acc,
                             text_stats, plan_extras, released, ingest_quarantine)
        parent = manifest["parent"]
        parent_manifest = publish.read_manifest(f"{root}/{parent}/{publish.MANIFEST}") if parent else None
        report = gates.evaluate(rel.gates, manifest, parent_manifest, optional_sources)
        report["accepted"] = accept_gates and not report["passed"]
        manifest["gates"] = report
        if not report["passed"] and not accept_gates:
            # The manifest less its shards (deleted): enough for the report of the rejected release.
            record = {k: v for k, v in manifest.items() if k != "shards"}
            rejected = publish.reject(root, version, record)
            fates.publish(report_dir(lake, rel.name, version, rejected=True))
            raise gates.GateFailed(rel.name, version, report, rejected)
        publish.commit(root, manifest)
        fates.publish(report_dir(lake, rel.name, version))  # after the commit: a release's report reads it
    finally:
        scratch.remove()
    return manifest, True


def _manifest(cfg: PipelineConfig, lake: Lake, stages: list[StageInfo], run_id: str, code_version: str,
              raw_shards: list[str], chash: str, version: str, writer: ShardWriter, acc: Accounting,
              text_stats: TextStats, plan_extras: dict[str, Any], released: dict[str, dict[str, int]] | None,
              ingest_quarantine: dict[str, int] | None) -> dict[str, Any]:
    """The release's manifest (without its gates' report) from what the pass over the lake counted."""
    rel = cfg.release
    acc.add_ingest_quarantine(ingest_quarantine or {})
    fault_point("release:shards_written")
    parent = latest_version(lake, rel.name)
    return {
        "name": rel.name, "version": version, "parent": parent,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "run_id": run_id,
        "pipeline": cfg.name, "config_hash": cfg.config_hash(), "curation_hash": curation_hash(cfg),
        "code_version": code_version, "seed": rel.seed, "selection": rel.select, "order": rel.order,
        "content_hash": chash, "tokenizer": "whitespace",
        "inputs": {"stages": {s.name: s.key for s in stages},
                   "raw_shards": [p[len(lake.root) + 1:] for p in raw_shards]},
        "totals": {"rows": sum(s["rows"] for s in writer.shards), "tokens": sum(s["tokens"] for s in writer.shards),
                   "bytes": sum(s["bytes"] for s in writer.shards)},
        "sources": acc.per_source,
        "drop_reasons": acc.drop_reasons(),
        "shards": writer.shards,
        # Rows and tokens of each source in the release, repeats included (= kept without a mixture).
        "released": released or {s: {"rows": a["rows_kept"], "tokens": a["tokens_kept"]}
                                 for s, a in acc.per_source.items()},
        "text": {"chain": list(rel.text), "steps": text_stats.records()},
        **plan_extras,
    }


def _chunks(lake: Lake, raw_shards: list[str], stages: list[StageInfo], reads: Reads, raw_text: bool
            ) -> Iterator[tuple[str, str, pl.DataFrame, pa.Table, pa.Array | None, dict[str, str]]]:
    """(raw shard, source, frame, chunk, token counts, missing) of every raw shard in order
    (``fates.shard_parts``; ``_frame`` says what the frame holds). Runs in the read-ahead thread,
    so the token counts of the next chunk are taken while this one is decided."""
    for raw in raw_shards:
        source = lake.source_of(raw)
        for chunk, columns, missing in shard_parts(raw, source, stages, reads, lake.annotation_path):  # one chunk
            df, n_tokens = _frame(chunk, columns, raw_text)
            yield raw, source, df, chunk, n_tokens, missing


def _frame(chunk: pa.Table, columns: list[pl.Series], raw_text: bool) -> tuple[pl.DataFrame, pa.Array | None]:
    """The frame the decision reads, and the raw texts' token counts when ``raw_text``.

    With a ``release.text`` chain the text is transformed in Polars, so the frame is the whole
    chunk. Without one (``raw_text``) the release carries the raw text unchanged: the frame holds
    every column but the text, plus ``_blank`` (``fates.blank_texts``), and the text stays in the
    Arrow chunk until the kept rows are written. Polars would otherwise copy every raw text in
    and the kept ones back out (two copies of the corpus' text, and their page faults: about a
    third of the release's CPU at 200,000 documents)."""
    if not raw_text:
        df = pl.from_arrow(chunk)
        assert isinstance(df, pl.DataFrame)
        return (df.with_columns(columns) if columns else df), None
    n_tokens = count_tokens_arrow(chunk.column("text"))
    df = pl.from_arrow(chunk.drop_columns(["text"]))
    assert isinstance(df, pl.DataFrame)
    return df.with_columns([*columns, blank_texts(n_tokens)]), n_tokens


def _kept_table(chunk: pa.Table, keep: pl.Series, kept: pl.DataFrame, text: pl.Expr,
                n_tokens: pa.Array | None) -> pa.Table:
    """The kept rows (``keep``: the chunk's mask; ``kept``: the decided frame's kept rows) as a
    release shard holds them (``RELEASE_SCHEMA``: the documents' columns and ``n_tokens``), from
    the frame (text chain) or filtered out of the Arrow chunk (raw text). Tokens are counted on
    the text the shard gets."""
    if n_tokens is None:
        table = kept.with_columns(text.alias("text")).select(DOCUMENT.names).to_arrow().cast(DOCUMENT)
        n_tokens = count_tokens_arrow(table.column("text"))  # in place: no other copy of the text
    else:
        mask = pa.array(keep.to_numpy())
        table, n_tokens = chunk.filter(mask).select(DOCUMENT.names).cast(DOCUMENT), n_tokens.filter(mask)
    return table.append_column(RELEASE_SCHEMA.field("n_tokens"), n_tokens)


def _write(cfg: PipelineConfig, lake: Lake, stages: list[StageInfo], raw_shards: list[str], writer: ShardWriter,
           planner: PlanFn | None, plan_columns: tuple[str, ...], scratch: str, fates: FatesSink,
           picked: PickedTexts | None = None) -> tuple[Accounting, TextStats, dict[str, Any], dict[str, dict[str, int]] | None]:
    """The pass over the lake: fates (accounted, and each row's into ``fates``), text statistics,
    and the shards (streamed, or staged and written in the planner's order). Returns what the
    manifest needs."""
    rel = cfg.release
    sources = source_names(cfg)  # ingested sources, then derived (synthetic) ones
    selection = parse_selection(rel.select, {s.name: set(s.columns) for s in stages})
    reads = Reads.of(stages, selection.columns, selection.stages, list(rel.text), plan_columns)
    text = release_text(list(rel.text))
    acc, text_stats = Accounting(sources), TextStats(list(rel.text))
    staging: list[str] = []
    small: dict[str, list[pl.DataFrame]] = {s: [] for s in sources}
    raw_text = not rel.text
    # Chunks are read one ahead and shards written one behind, in threads (releasing/overlap.py).
    with Behind(writer.add) as write_behind, closing(read_ahead(_chunks(lake, raw_shards, stages, reads, raw_text))) as chunks:
        for raw, source, df, chunk, counts, missing in chunks:
            for col in selection.columns | set(plan_columns) | set(rel.text):  # a stage that does not apply: nulls
                if col not in df.columns:
                    df = df.with_columns(pl.lit(None, pl.String if col in rel.text else pl.Null).alias(col))
            df = decide(df, source, stages, missing, selection.expr, reads, text,
                        pl.col("_blank") if raw_text else None)
            acc.add(source, df)
            fates.add(raw, df)
            if picked is not None:
                picked.add(raw, chunk.column("text"))
            keep = df.get_column("_fate") == "kept"
            kept = df.filter(keep)
            table = _kept_table(chunk, keep, kept, text, counts)
            n_tokens = table.column("n_tokens")
            text_stats.add(source, kept, {s.name: s.applies_to(source) for s in stages})
            acc.per_source[source]["tokens_kept"] += int(pc.sum(n_tokens).as_py() or 0)
            if planner is None:
                write_behind.put(table)
                continue
            kept = kept.with_columns(
                pl.Series("n_tokens", n_tokens, dtype=pl.Int64),
                pl.Series("_bytes", pc.binary_length(table.column("text")), dtype=pl.Int64))
            path = f"{scratch}/{len(staging):06d}.parquet"
            storage.write_table_atomic(path, table)
            small[source].append(kept.select(
                pl.lit(len(staging), pl.Int64).alias("_file"), pl.int_range(kept.height, dtype=pl.Int64).alias("_row"),
                "_bytes", "id", "n_tokens",
                *[pl.col(c) for c in plan_columns]))
            staging.append(path)
    plan_extras: dict[str, Any] = {}
    released = None
    if planner is not None:
        fault_point("release:staged")
        frames = {s: pl.concat(parts, how="vertical_relaxed") for s, parts in small.items() if parts}
        frames = {s: f for s, f in frames.items() if f.height}
        del small
        # Nothing kept: nothing to plan (the gates judge the empty release).
        ordered, plan_extras = planner(frames) if frames else (pl.DataFrame(), {})
        if ordered.height:
            got = ordered.group_by("source").agg(pl.len().alias("rows"), pl.col("n_tokens").sum().alias("tokens"))
            released = {s: {"rows": 0, "tokens": 0} for s in sources}
            released.update({r["source"]: {"rows": int(r["rows"]), "tokens": int(r["tokens"])} for r in got.to_dicts()})
            write_in_order(staging, ordered.select("_file", "_row", "_bytes"), writer, scratch)
    writer.close()
    return acc, text_stats, plan_extras, released
