"""Build an immutable, versioned release from raw shards and their annotations.

For every raw shard of the configured sources, in lake order, the release step joins the
shard with its annotation files (row-aligned, no key join), decides each row's fate, and
accounts for it:

1. **quarantined** if a stage the selection reads recorded an error for the row
   (``<stage>._error``) or has no annotation file for the shard (it failed there);
2. **dropped** with reason ``release:empty_text`` if the text is empty or whitespace;
3. **dropped** if the selection expression is false, attributed to the first filter the
   selection reads (pipeline order) whose ``keep`` is false (``<stage>:<its reason>``), else to
   ``select``;
4. otherwise **kept**. Stages the selection does not mention never drop anything.

Kept rows are written as ``shard-000000.parquet``... in the configured order, each shard at most
``shard_rows`` rows and ``shard_bytes`` of text, then ``manifest.json`` with sha256 per shard, and
only then the folder is renamed into place: a release either exists completely or not at all.

The version is ``<UTC date>-<6 hex of the content hash>``, where the content hash covers the
release config, the selection, the stage keys, the input shards (path and size) and the code
version. If a release with the same content hash exists, it is reused: re-running after a crash,
or on a night with no new input, never makes a second copy. Token counts are whitespace-separated
words until a tokenizer is configured.

Cost: one streaming pass over the kept text; ``order: shuffle`` adds an out-of-core DuckDB sort.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage
from schemas.config import PipelineConfig, stable_hash
from schemas.derived import source_names
from schemas.documents import DOCUMENT
from warehouse.lake import Lake
from warehouse.selection import parse_selection

ERROR_COLUMN = "_error"
RELEASE_SCHEMA = pa.schema(list(DOCUMENT) + [pa.field("n_tokens", pa.int64())])


@dataclass
class StageInfo:
    """What the release needs to know of a configured stage."""

    name: str
    key: str
    columns: list[str]  # columns it writes (without id/_error)
    sources: list[str] | None  # None: all sources

    @property
    def is_filter(self) -> bool:
        return "keep" in self.columns

    def applies_to(self, source: str) -> bool:
        return self.sources is None or source in self.sources


def _sha256(path: str) -> str:
    fs, p = storage.fs_and_path(path)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_columns(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = storage.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=columns)


def content_hash(cfg: PipelineConfig, stages: list[StageInfo], raw_shards: list[str], lake: Lake, code_version: str) -> str:
    inputs = []
    for path in raw_shards:
        fs, p = storage.fs_and_path(path)
        inputs.append([path[len(lake.root):], fs.info(p)["size"]])
    return stable_hash({
        "release": cfg.release.model_dump(mode="json"),
        "stages": [[s.name, s.key, s.sources] for s in stages],
        "inputs": inputs,
        "code_version": code_version,
    })


def find_release(lake: Lake, name: str, chash: str) -> dict[str, Any] | None:
    """An existing release of ``name`` with this content hash, if any."""
    for manifest in storage.glob(f"{lake.release_dir(name)}/*/manifest.json"):
        fs, p = storage.fs_and_path(manifest)
        with fs.open(p, "r") as f:
            m = json.load(f)
        if m.get("content_hash") == chash:
            return m
    return None


def latest_version(lake: Lake, name: str) -> str | None:
    pointer = f"{lake.release_dir(name)}/LATEST"
    if not storage.exists(pointer):
        return None
    fs, p = storage.fs_and_path(pointer)
    with fs.open(p, "r") as f:
        return f.read().strip() or None


def _shard_frame(lake: Lake, raw: str, stages: list[StageInfo]) -> tuple[pl.DataFrame, dict[str, str]]:
    """The raw shard with every applicable stage's columns as ``<stage>.<col>``.

    Returns the frame and, for stages whose annotation file is missing, why."""
    df = pl.from_arrow(_read_columns(raw))
    assert isinstance(df, pl.DataFrame)
    missing: dict[str, str] = {}
    source = lake.source_of(raw)
    for st in stages:
        if not st.applies_to(source):
            continue
        ann_path = lake.annotation_path(st.key, raw)
        if not storage.exists(ann_path):
            missing[st.name] = f"stage {st.name} has no annotations for this shard (it failed there; see stage_runs)"
            continue
        ann = pl.from_arrow(_read_columns(ann_path, st.columns + [ERROR_COLUMN]))
        assert isinstance(ann, pl.DataFrame)
        if ann.height != df.height:
            missing[st.name] = f"stage {st.name} annotations have {ann.height} rows for a shard of {df.height}"
            continue
        df = df.with_columns([ann.get_column(c).alias(f"{st.name}.{c}") for c in ann.columns])
    return df, missing


def _fates(df: pl.DataFrame, source: str, stages: list[StageInfo], missing: dict[str, str], select: pl.Expr,
           used: set[str]) -> pl.DataFrame:
    """Add ``_fate`` (kept/dropped/quarantined), ``_stage`` and ``_reason`` columns.

    The selection alone decides what is kept; ``used`` names the stages it reads. A row is
    quarantined when one of those stages failed on it (or on its whole shard), dropped when its
    text is empty or the selection is false, and a drop is attributed to the first filter of the
    selection (pipeline order) whose ``keep`` is false, with that filter's reason.
    """
    miss = {k: v for k, v in missing.items() if k in used}
    applicable = [s for s in stages if s.applies_to(source) and s.name in used and s.name not in missing]
    # Polars when/then chains change type as they grow; Any keeps the chain readable.
    fate: Any = pl.when(pl.lit(bool(miss))).then(pl.lit("quarantined"))
    stage: Any = pl.when(pl.lit(bool(miss))).then(pl.lit(next(iter(miss), None)))
    reason: Any = pl.when(pl.lit(bool(miss))).then(pl.lit(next(iter(miss.values()), None)))
    for s in applicable:
        err = pl.col(f"{s.name}.{ERROR_COLUMN}").is_not_null()
        fate, stage = fate.when(err).then(pl.lit("quarantined")), stage.when(err).then(pl.lit(s.name))
        reason = reason.when(err).then(pl.col(f"{s.name}.{ERROR_COLUMN}"))
    empty = pl.col("text").str.strip_chars().str.len_bytes() == 0
    fate, stage, reason = (fate.when(empty).then(pl.lit("dropped")), stage.when(empty).then(pl.lit("release")),
                           reason.when(empty).then(pl.lit("empty_text")))
    for s in applicable:
        if s.is_filter:
            drop = ~select & ~pl.col(f"{s.name}.keep").fill_null(False)
            fate, stage = fate.when(drop).then(pl.lit("dropped")), stage.when(drop).then(pl.lit(s.name))
            r = pl.col(f"{s.name}.reason") if "reason" in s.columns else pl.lit("keep=false")
            reason = reason.when(drop).then(r.fill_null("keep=false"))
    # Columns of stages that do not apply to this source are null, so the selection sees nulls.
    fate = fate.when(~select).then(pl.lit("dropped")).otherwise(pl.lit("kept"))
    stage = stage.when(~select).then(pl.lit("select")).otherwise(pl.lit(None))
    reason = reason.when(~select).then(pl.lit("selection expression is false")).otherwise(pl.lit(None))
    return df.with_columns(fate.alias("_fate"), stage.alias("_stage"), reason.alias("_reason"))


class _ShardWriter:
    def __init__(self, out_dir: str, shard_rows: int, shard_bytes: int):
        self.out_dir, self.shard_rows, self.shard_bytes = out_dir, shard_rows, shard_bytes
        self.shards: list[dict[str, Any]] = []
        self.buf: list[pa.Table] = []
        self.rows = self.bytes = 0

    def add(self, table: pa.Table) -> None:
        # Cut to the row limit exactly, so shard boundaries depend only on the ordered rows.
        while table.num_rows:
            take = min(table.num_rows, self.shard_rows - self.rows)
            part = table.slice(0, take)
            self.buf.append(part)
            self.rows += part.num_rows
            self.bytes += int(pa.compute.sum(pa.compute.binary_length(part.column("text"))).as_py() or 0)
            table = table.slice(take)
            if self.rows >= self.shard_rows or self.bytes >= self.shard_bytes:
                self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.concat_tables(self.buf).combine_chunks()
        name = f"shard-{len(self.shards):06d}.parquet"
        path = f"{self.out_dir}/{name}"
        w = storage.parquet_writer(path, RELEASE_SCHEMA)
        w.write_table(table, row_group_size=10_000)
        w.close()
        fs, p = storage.fs_and_path(path)
        self.shards.append({"file": name, "rows": table.num_rows,
                            "tokens": int(pa.compute.sum(table.column("n_tokens")).as_py() or 0),
                            "bytes": int(fs.info(p)["size"]), "sha256": _sha256(path)})
        self.buf, self.rows, self.bytes = [], 0, 0


PlanFn = Callable[[dict[str, pl.DataFrame]], tuple[pl.DataFrame, dict[str, Any]]]


def build_release(cfg: PipelineConfig, lake: Lake, stages: list[StageInfo], run_id: str, code_version: str,
                  ingest_quarantine: dict[str, int] | None = None, planner: PlanFn | None = None,
                  plan_columns: tuple[str, ...] = ()) -> tuple[dict[str, Any], bool]:
    """Write (or find) the release; returns (manifest, created).

    Without ``planner`` the kept rows are written in lake order as they stream by. With one
    (mixture sampling, curriculum or a seeded shuffle: see planning.release_plan), kept rows are
    staged per shard, the planner gets per-source frames of (``_file``, ``_row``, ``id``,
    ``n_tokens`` and ``plan_columns``) and returns the included copies in training order, and
    DuckDB fetches the texts in that order out of core.
    """
    if planner is None and cfg.release.order != "ingest":
        raise ValueError(f"release.order {cfg.release.order!r} needs a planner (see planning.release_plan)")
    rel = cfg.release
    sources = source_names(cfg)  # ingested sources, then derived (synthetic) ones
    raw_shards = [p for s in sources for p in lake.raw_shards(s)]
    chash = content_hash(cfg, stages, raw_shards, lake, code_version)
    existing = find_release(lake, rel.name, chash)
    if existing is not None:
        return existing, False
    selection = parse_selection(rel.select, {s.name: set(s.columns) for s in stages})
    version = f"{datetime.now(UTC):%Y-%m-%d}-{chash[:6]}"
    final_dir = lake.release_dir(rel.name, version)
    tmp_dir = f"{lake.release_dir(rel.name)}/.tmp-{version}"
    fs, tmp_p = storage.fs_and_path(tmp_dir)
    if fs.exists(tmp_p):
        fs.rm(tmp_p, recursive=True)
    fs.makedirs(tmp_p, exist_ok=True)

    per_source = {s: {"rows_in": 0, "rows_kept": 0, "rows_dropped": 0, "rows_quarantined": 0, "tokens_kept": 0}
                  for s in sources}
    drops: dict[tuple[str, str, str], int] = {}
    staging: list[str] = []
    small: dict[str, list[pl.DataFrame]] = {s: [] for s in sources}
    writer = _ShardWriter(tmp_dir, rel.shard_rows, rel.shard_bytes)
    for i, raw in enumerate(raw_shards):
        source = lake.source_of(raw)
        df, missing = _shard_frame(lake, raw, stages)
        for col in selection.columns | set(plan_columns):  # a stage that does not apply here: nulls
            if col not in df.columns:
                df = df.with_columns(pl.lit(None).alias(col))
        df = _fates(df, source, stages, missing, selection.expr, selection.stages)
        acc = per_source[source]
        acc["rows_in"] += df.height
        counts = df.group_by("_fate", "_stage", "_reason").len().rows()
        for fate, stage, reason, n in counts:
            if fate == "kept":
                acc["rows_kept"] += n
                continue
            acc["rows_dropped" if fate == "dropped" else "rows_quarantined"] += n
            key = (source, stage or "", ("quarantined: " + reason) if fate == "quarantined" else (reason or ""))
            drops[key] = drops.get(key, 0) + n
        kept = df.filter(pl.col("_fate") == "kept").with_columns(
            pl.col("text").str.count_matches(r"\S+").cast(pl.Int64).alias("n_tokens"))
        acc["tokens_kept"] += int(kept.get_column("n_tokens").sum() or 0)
        table = kept.select(RELEASE_SCHEMA.names).to_arrow().cast(RELEASE_SCHEMA)
        if planner is None:
            writer.add(table)
        else:
            path = f"{tmp_dir}/_staging/{i:06d}.parquet"
            storage.write_table_atomic(path, table)
            small[source].append(kept.select(
                pl.lit(len(staging), pl.Int64).alias("_file"), pl.int_range(kept.height, dtype=pl.Int64).alias("_row"),
                "id", "n_tokens", *[pl.col(c) for c in plan_columns]))
            staging.append(path)
    for s, n in (ingest_quarantine or {}).items():
        if s in per_source and n:
            per_source[s]["rows_in"] += n
            per_source[s]["rows_quarantined"] += n
            drops[(s, "ingest", "quarantined: unreadable input")] = drops.get((s, "ingest", "quarantined: unreadable input"), 0) + n
    plan_extras: dict[str, Any] = {}
    released = {s: {"rows": a["rows_kept"], "tokens": a["tokens_kept"]} for s, a in per_source.items()}
    if planner is not None:
        frames = {s: pl.concat(parts, how="vertical_relaxed") for s, parts in small.items() if parts}
        ordered, plan_extras = planner(frames)
        if ordered.height:
            got = ordered.group_by("source").agg(pl.len().alias("rows"), pl.col("n_tokens").sum().alias("tokens"))
            released = {s: {"rows": 0, "tokens": 0} for s in sources}
            released.update({r["source"]: {"rows": int(r["rows"]), "tokens": int(r["tokens"])} for r in got.to_dicts()})
        if ordered.height:
            _write_in_order(staging, ordered.select("_file", "_row"), writer, f"{tmp_dir}/_duckdb_tmp")
        if staging:
            fs.rm(storage.fs_and_path(f"{tmp_dir}/_staging")[1], recursive=True)
    writer.flush()
    parent = latest_version(lake, rel.name)
    manifest = {
        "name": rel.name, "version": version, "parent": parent,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "run_id": run_id,
        "pipeline": cfg.name, "config_hash": cfg.config_hash(), "code_version": code_version,
        "seed": rel.seed, "selection": rel.select, "order": rel.order, "content_hash": chash,
        "tokenizer": "whitespace",
        "inputs": {"stages": {s.name: s.key for s in stages},
                   "raw_shards": [p[len(lake.root) + 1:] for p in raw_shards]},
        "totals": {"rows": sum(s["rows"] for s in writer.shards), "tokens": sum(s["tokens"] for s in writer.shards),
                   "bytes": sum(s["bytes"] for s in writer.shards)},
        "sources": per_source,
        "drop_reasons": [{"source": k[0], "stage": k[1], "reason": k[2], "rows": n} for k, n in sorted(drops.items())],
        "shards": writer.shards,
        # Rows and tokens of each source in the release, repeats included (= kept without a mixture).
        "released": released,
        **plan_extras,
    }
    with fs.open(f"{tmp_p}/manifest.json", "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    fs.mv(tmp_p, storage.fs_and_path(final_dir)[1], recursive=True)
    with storage.atomic_path(f"{lake.release_dir(rel.name)}/LATEST") as tmp:
        with fs.open(storage.fs_and_path(tmp)[1], "w") as f:
            f.write(version + "\n")
    return manifest, True


def _write_in_order(staging: list[str], order: pl.DataFrame, writer: _ShardWriter, tmp_dir: str) -> None:
    """Write staged rows in the planned order (with repeats), sorted out of core by DuckDB."""
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory='{tmp_dir}'")
        con.execute("SET memory_limit='2GB'")
        plan = order.with_row_index("_ord").to_arrow()
        files = pa.table({"_file": pa.array(range(len(staging)), pa.int64()), "filename": pa.array(staging)})
        con.register("plan_order", plan)
        con.register("plan_files", files)
        listing = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in staging) + "]"
        reader = con.sql(
            f"SELECT s.* EXCLUDE (filename, file_row_number) FROM plan_order o JOIN plan_files f USING (_file) "
            f"JOIN read_parquet({listing}, filename=true, file_row_number=true) s "
            "ON s.filename = f.filename AND s.file_row_number = o._row ORDER BY o._ord").to_arrow_reader(10_000)
        for rb in reader:
            writer.add(pa.Table.from_batches([rb]).cast(RELEASE_SCHEMA))
    finally:
        con.close()
