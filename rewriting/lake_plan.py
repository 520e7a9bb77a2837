"""Planning a rewrite stage's run against the lake: which parent shards need work, in which folder.

Reads the live parent shards in lake order, the stage's annotations of shards already done
(their budget charges) and the live markers of its derived sources, and routes the rest
(rewriting/plan.py). Returns the shard tasks for an executor, and the tombstones (empty markers)
that retire derived documents whose parents are gone or no longer routed. Reads only small
columns and the text of new parent shards (for word counts), batch by batch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from engines import storage
from engines.executor import ShardTask, shard_batches
from rewriting.plan import WORDS, current, fingerprint, marker_key, route_shard, run_name
from rewriting.stage import RewriteStage
from rewriting.task import RewriteShardTask, RouteWork
from warehouse.lake import Lake


@dataclass
class RewritePlan:
    tasks: list[RewriteShardTask] = field(default_factory=list)
    tombstones: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (marker path, marker)
    done: list[tuple[str, str]] = field(default_factory=list)  # (source, parent shard) already annotated
    spent: dict[str, int] = field(default_factory=dict)  # route -> words charged, all shards


def _charged(ann_path: str) -> pl.DataFrame:
    fs, p = storage.fs_and_path(ann_path)
    with fs.open(p, "rb") as f:
        df = pl.from_arrow(pq.read_table(f, columns=["routes", "routed_tokens"]))
    assert isinstance(df, pl.DataFrame)
    return df.filter(pl.col("routes").is_not_null())


def _routing_frame(stage: RewriteStage, task: ShardTask, batch_rows: int) -> pl.DataFrame:
    """id, word counts and the routing columns of one shard (the text itself is not kept)."""
    parts = []
    for _, batch in shard_batches(stage, task, batch_rows):
        text = pl.col("text")
        parts.append(batch.with_columns(text.str.count_matches(WORDS).cast(pl.Int64).alias("_words"),
                                        text.str.strip_chars().str.len_bytes().alias("_len")).drop("text"))
    if not parts:
        return pl.DataFrame()
    frame = pl.concat(parts, how="vertical_relaxed")
    return frame.with_columns(pl.when(pl.col("_len") == 0).then(pl.lit("")).otherwise(pl.lit("x")).alias("text"))


def plan_rewrite(lake: Lake, stage: RewriteStage, name: str, key: str, parents: list[tuple[str, str]],
                 feeds: dict[str, tuple[tuple[str, str, str], ...]], exprs: dict[str, pl.Expr], run_id: str,
                 cache_dir: str, shard_bytes: int, batch_rows: int) -> RewritePlan:
    """The work of one run (see the module docstring). ``parents``: (source, shard) in lake order."""
    routes = {r.route_name: r for r in stage.rparams.routes}
    plan = RewritePlan()
    live: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for src in dict.fromkeys(s for s, _ in parents):
        for r in routes:
            for m in lake.ingest_markers(f"{src}.{r}"):
                live.setdefault((m["source"], m["file"]), []).append(m)
    pending: list[tuple[str, str, str, dict[str, Any]]] = []  # (source, raw, rel, route -> (rows, tokens, fp, ids))
    for src, raw in parents:
        rel = raw[len(lake.root) + 1:]
        ann = lake.annotation_path(key, raw)
        if storage.exists(ann):
            for row in _charged(ann).iter_rows(named=True):
                for r in str(row["routes"]).split(","):
                    plan.spent[r] = plan.spent.get(r, 0) + int(row["routed_tokens"] or 0)
            plan.done.append((src, raw))
            continue
        frame = _routing_frame(stage, ShardTask(src, raw, "", feeds.get(raw, ())), batch_rows)
        routed, _ = route_shard(frame, list(routes.values()), exprs, plan.spent) if frame.height else ({}, None)
        ids = frame.get_column("id") if frame.height else pl.Series([], dtype=pl.String)
        work = {}
        for r, got in routed.items():
            fp = fingerprint(stage.generation_hash(), routes[r], rel, ids.gather(got.rows).to_list())
            work[r] = (got, fp)
        pending.append((src, raw, rel, work))
    folder = run_name(key, [(r, rel, fp) for _, _, rel, w in pending for r, (got, fp) in w.items() if got.rows])
    index: dict[str, int] = {}

    def next_index(derived: str) -> int:
        index[derived] = index.get(derived, -1) + 1
        return index[derived]

    seen: set[tuple[str, str]] = set()
    for src, raw, rel, work in pending:
        items = []
        for r, (got, fp) in work.items():
            derived = f"{src}.{r}"
            seen.add((derived, rel))
            markers = live.get((derived, rel), [])
            stale = tuple(sorted(marker_key(m) for m in markers if not current(m, fp)))
            if got.rows:
                is_current = any(current(m, fp) for m in markers)
                items.append(RouteWork(r, derived, tuple(got.rows), got.tokens, fp, not is_current,
                                       lake.raw_dir(derived, folder), next_index(derived) if not is_current else -1,
                                       stale))
            elif stale:
                plan.tombstones.append(_tombstone(lake, derived, folder, next_index(derived), rel, stale, name, key))
        plan.tasks.append(RewriteShardTask(stage, name, key, src, raw, rel, lake.annotation_path(key, raw),
                                           tuple(items), run_id, cache_dir, shard_bytes))
    done_rels = {raw[len(lake.root) + 1:] for _, raw in plan.done}
    for (derived, rel), markers in sorted(live.items()):
        if (derived, rel) in seen or rel in done_rels:
            continue
        # The parent shard is no longer live (re-ingested, superseded): retire its derived documents.
        stale = tuple(sorted(marker_key(m) for m in markers))
        plan.tombstones.append(_tombstone(lake, derived, folder, next_index(derived), rel, stale, name, key))
    return plan


def _tombstone(lake: Lake, derived: str, folder: str, idx: int, rel: str, stale: tuple[str, ...], name: str,
               key: str) -> tuple[str, dict[str, Any]]:
    marker = {"source": derived, "file": rel, "file_index": idx, "fingerprint": "retired", "ingest_run": folder,
              "parts": [], "rows_in": 0, "rows_written": 0, "rows_quarantined": 0, "bytes_read": 0, "seconds": 0.0,
              "skipped": False, "quarantine_file": None,
              "ingested_at": datetime.now(UTC).isoformat(timespec="microseconds"), "supersedes": list(stale),
              "reader": {"kind": "rewrite", "stage": name},
              "rewrite": {"stage": name, "stage_key": key, "route": derived.rsplit(".", 1)[-1], "retired": True}}
    return f"{lake.raw_dir(derived, folder)}/_done/{idx:05d}.json", marker


def read_marker(path: str) -> dict[str, Any]:
    fs, p = storage.fs_and_path(path)
    with fs.open(p, "r") as f:
        return json.load(f)
