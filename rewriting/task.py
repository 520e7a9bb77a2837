"""One parent shard's rewriting, as a picklable task any executor can run (``executor.map``).

``rewrite_shard`` reads the routed parents of one raw shard, generates for every route through
the worker's ``Generator`` (set up once per worker process and stage), and writes, through the
storage layer, for each route whose work is not already current:

1. the derived documents: ``raw/<source>.<route>/<run>/part-<index>-<k>.parquet`` (DOCUMENT
   schema, zstd, rolled over at ``shard_bytes`` of text, each written atomically);
2. every candidate, kept or dropped, with its lineage: ``.../<run>/_outputs/<index>.parquet``
   (schemas.derived.REWRITE_OUTPUTS);
3. the completion marker ``.../<run>/_done/<index>.json``, shaped like an ingest marker (so the
   lake, the stages and the catalog read the derived source like any other), last;

and then the parent shard's annotation (rewriting/stage.py's columns), also atomically. The
annotation is the commit point of the shard: a shard with one is done for this stage key; a
crash before it redoes the shard, finding finished routes by their markers' fingerprints and
every reply in the result cache.

Never raises: a failure is returned as ``status="failed"`` with the error, the shard is retried
by the next run, and nothing half-written is ever listed by a marker.
"""
from __future__ import annotations

import json
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from engines import storage
from engines.executor import output_schema
from readers.ingest import _ShardSink, document_ids
from rewriting.generate import Generator, Output
from rewriting.methods.base import Parent
from rewriting.stage import ANNOTATION, RewriteStage
from schemas.config import stable_hash
from schemas.derived import REWRITE_OUTPUTS
from schemas.documents import DOCUMENT

_PARENT_COLUMNS = ["id", "text", "url", "domain", "crawl_date", "license"]


@dataclass(frozen=True)
class RouteWork:
    route: str
    source: str  # the derived source
    rows: tuple[int, ...]  # parent rows routed, in shard order
    tokens: int  # words charged to the budget
    fingerprint: str
    write: bool  # False: a current marker exists; generate (from the cache) but write nothing
    out_dir: str  # raw/<derived source>/<run>
    file_index: int
    supersedes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RewriteShardTask:
    stage: RewriteStage
    stage_name: str
    stage_key: str
    source: str  # the parent source
    raw_path: str  # the parent shard
    parent_rel: str  # the parent shard relative to the lake root
    annotation_path: str
    routes: tuple[RouteWork, ...]
    run_id: str
    cache_dir: str
    shard_bytes: int


@dataclass
class RewriteShardResult:
    task: RewriteShardTask
    status: str  # computed | failed
    rows: int = 0
    markers: list[dict[str, Any]] = field(default_factory=list)  # written markers (with "_path")
    counts: dict[str, int] = field(default_factory=dict)  # generated, kept, dropped, errors, cached
    seconds: float = 0.0
    error: str | None = None


_GENERATORS: dict[str, Generator] = {}


def worker_generator(stage: RewriteStage, cache_dir: str) -> Generator:
    """The worker's generator for this stage's params (model loaded once per process)."""
    key = stable_hash([stage.rparams.model_dump(mode="json"), cache_dir])
    gen = _GENERATORS.get(key)
    if gen is None or gen.backend is None or gen.backend.closed:  # closed: the worker released its models
        gen = Generator(stage.rparams)
        gen.setup(cache_dir)
        _GENERATORS[key] = gen
    return gen


def _read_parents(raw_path: str, rows: list[int]) -> pl.DataFrame:
    """The routed rows of a parent shard (streamed by row group; only those rows are kept)."""
    fs, p = storage.fs_and_path(raw_path)
    want = pl.Series("r", rows, dtype=pl.Int64)
    parts, offset = [], 0
    with fs.open(p, "rb") as f:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=_PARENT_COLUMNS):
            df = pl.from_arrow(pa.Table.from_batches([rb]))
            assert isinstance(df, pl.DataFrame)
            idx = df.with_row_index("_row", offset).filter(pl.col("_row").is_in(want.implode()))
            if idx.height:
                parts.append(idx)
            offset += rb.num_rows
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts).with_columns(pl.col("_row").cast(pl.Int64))


def _shard_ids(raw_path: str) -> pa.Array:
    fs, p = storage.fs_and_path(raw_path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=["id"]).column("id").combine_chunks()


def lineage(task: RewriteShardTask, work: RouteWork, o: Output, parent: Parent, gen: Generator) -> dict[str, Any]:
    j = o.first
    assert gen.backend is not None
    return {
        "parent_id": parent.id, "parent_source": task.source, "parent_shard": task.parent_rel, "parent_row": parent.row,
        "stage": task.stage_name, "route": work.route, "method": o.method, "family": j.family,
        "prompt": {"id": j.template.id, "version": j.template.version},
        "generator": {"model": gen.backend.model_id, "backend": gen.params.inference.backend,
                      **j.sampling.model_dump(mode="json", exclude={"stop"})},
        "segment": {"index": j.segment.index, "start": o.jobs[0].segment.start, "end": o.jobs[-1].segment.end},
    }


def derived_id(source: str, lin: dict[str, Any]) -> str:
    key = json.dumps([lin["parent_id"], lin["route"], lin["family"], lin["prompt"], lin["generator"],
                      lin["segment"]["index"]], sort_keys=True)
    return document_ids(source, [key])[0]


class _RouteWriter:
    """Collects one route's documents and candidate records for one parent shard and writes them."""

    def __init__(self, task: RewriteShardTask, work: RouteWork):
        self.task, self.work = task, work
        self.run = work.out_dir.rstrip("/").rsplit("/", 1)[-1]
        self.sink = _ShardSink(_SinkTask(work.out_dir, work.file_index, task.shard_bytes))  # type: ignore[arg-type]
        self.records: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.cached = 0

    def add(self, outs: list[Output], parents: list[Parent], parent_meta: pl.DataFrame, gen: Generator) -> None:
        docs: list[dict[str, Any]] = []
        for o in outs:
            p = parents[o.cand.parent]
            lin = lineage(self.task, self.work, o, p, gen)
            did = derived_id(self.work.source, lin)
            c = o.cand
            self.counts["generated"] += 1
            self.counts[c.status] += 1
            if c.reason:
                self.counts[f"reason:{c.reason}"] += 1
            self.cached += o.cached == len(o.jobs)
            words = len(c.text.split()) if c.text else 0
            self.records.append({
                "id": did, "status": c.status, "reason": c.reason, "source": self.work.source, "parent_id": p.id,
                "parent_source": self.task.source, "parent_shard": self.task.parent_rel, "parent_row": p.row,
                "stage": self.task.stage_name, "route": self.work.route, "method": o.method, "family": lin["family"],
                "prompt_id": lin["prompt"]["id"], "prompt_version": lin["prompt"]["version"],
                "model": lin["generator"]["model"], "backend": lin["generator"]["backend"],
                "sampling": json.dumps(o.first.sampling.model_dump(mode="json")), "seed": o.first.sampling.seed,
                "segment_index": lin["segment"]["index"], "segment_start": lin["segment"]["start"],
                "segment_end": lin["segment"]["end"], "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "words": words, "finish_reason": c.finish_reason,
                "cached": o.cached == len(o.jobs), "detail": json.dumps(c.extra) if c.extra else None,
                "reply": None if c.status == "kept" else c.reply[:4000], "ingest_run": self.run,
                "file_index": self.work.file_index, "run_id": self.task.run_id})
            if c.text is not None and c.status == "kept":
                meta = parent_meta.row(o.cand.parent, named=True)
                docs.append({"id": did, "text": c.text, "source": self.work.source, "url": meta["url"],
                             "domain": meta["domain"], "lang": None, "crawl_date": meta["crawl_date"],
                             "license": meta["license"], "meta": json.dumps({"lineage": lin}, sort_keys=True),
                             "ingest_run": self.run, "src_file": self.task.parent_rel, "src_offset": p.row})
        if docs and self.work.write:  # a current marker already lists these documents
            self.sink.add(pa.Table.from_pylist(docs, schema=DOCUMENT))

    def finish(self, seconds: float) -> dict[str, Any] | None:
        """Write parts, records and the marker (last); returns the marker, or None if not written."""
        if not self.work.write:
            return None
        self.sink.flush()
        outputs = f"{self.work.out_dir}/_outputs/{self.work.file_index:05d}.parquet"
        storage.write_table_atomic(outputs, pa.Table.from_pylist(self.records, schema=REWRITE_OUTPUTS))
        dropped = {k.removeprefix("reason:"): v for k, v in sorted(self.counts.items())
                   if k.startswith("reason:") and k != "reason:backend_error"}
        marker = {
            "source": self.work.source, "file": self.task.parent_rel, "file_index": self.work.file_index,
            "fingerprint": self.work.fingerprint, "ingest_run": self.run, "parts": self.sink.parts,
            "rows_in": len(self.work.rows), "rows_written": sum(p["rows"] for p in self.sink.parts),
            "rows_quarantined": 0, "bytes_read": 0, "seconds": round(seconds, 3), "skipped": False,
            "quarantine_file": None, "ingested_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "supersedes": list(self.work.supersedes), "reader": {"kind": "rewrite", "stage": self.task.stage_name},
            "rewrite": {"stage": self.task.stage_name, "stage_key": self.task.stage_key, "route": self.work.route,
                        "parent_source": self.task.source, "parent_shard": self.task.parent_rel,
                        "outputs": f"_outputs/{self.work.file_index:05d}.parquet", "routed_tokens": self.work.tokens,
                        "generated": self.counts["generated"], "kept": self.counts["kept"],
                        "dropped": dropped, "errors": self.counts["error"], "cached": self.cached},
        }
        path = f"{self.work.out_dir}/_done/{self.work.file_index:05d}.json"
        write_json_atomic(path, marker)
        return {**marker, "_path": path}


@dataclass(frozen=True)
class _SinkTask:  # what readers.ingest's shard sink reads of a task
    out_dir: str
    file_index: int
    shard_bytes: int


def write_json_atomic(url: str, obj: dict[str, Any]) -> None:
    storage.write_bytes_atomic(url, json.dumps(obj).encode())


def _annotation(task: RewriteShardTask, ids: pa.Array, per_parent: dict[int, dict[str, Any]], words: dict[int, int]) -> pa.Table:
    n = len(ids)
    cols: dict[str, list[Any]] = {k: [] for k in ANNOTATION}
    for r in range(n):
        a = per_parent.get(r)
        cols["routes"].append(",".join(a["routes"]) if a else None)
        cols["routed_tokens"].append(words.get(r, 0) if a else 0)
        for k in ("generated", "derived", "dropped", "errors"):
            cols[k].append(a[k] if a else 0)
        cols["drop_reasons"].append(json.dumps(dict(sorted(a["reasons"].items()))) if a and a["reasons"] else None)
        cols["origin"].append("real")
        cols["keep"].append(a["keep"] if a else True)
        cols["reason"].append(a["reason"] if a else None)
    schema = output_schema(task.stage)
    arrays = [ids] + [pa.array(cols[f.name], f.type) for f in schema if f.name in ANNOTATION] + [pa.nulls(n, pa.string())]
    return pa.Table.from_arrays(arrays, schema=schema)


def rewrite_shard(task: RewriteShardTask) -> RewriteShardResult:
    """Rewrite the routed parents of one shard (runs in a worker; see the module docstring)."""
    t0 = time.perf_counter()
    try:
        ids = _shard_ids(task.raw_path)
        rows = sorted({r for w in task.routes for r in w.rows})
        gen = worker_generator(task.stage, task.cache_dir) if rows else None
        writers = {w.route: _RouteWriter(task, w) for w in task.routes}
        per_parent: dict[int, dict[str, Any]] = {}
        words: dict[int, int] = {}
        step = task.stage.rparams.parents_per_batch
        for s in range(0, len(rows), step):
            frame = _read_parents(task.raw_path, rows[s:s + step])
            parents = [Parent(int(r), i, t, task.source) for r, i, t in
                       zip(frame.get_column("_row"), frame.get_column("id"), frame.get_column("text"))]
            pos = {p.row: k for k, p in enumerate(parents)}
            routed = {w.route: [pos[r] for r in w.rows if r in pos] for w in task.routes}
            assert gen is not None
            outs = gen.run(parents, routed)
            for w in task.routes:
                writers[w.route].add([o for o in outs if o.route == w.route], parents, frame, gen)
            _tally(gen, outs, parents, routed, per_parent)
            for p in parents:
                words[p.row] = len(p.text.split())
        markers = [m for m in (wr.finish(time.perf_counter() - t0) for wr in writers.values()) if m is not None]
        storage.write_table_atomic(task.annotation_path, _annotation(task, ids, per_parent, words))
        counts: Counter[str] = Counter()
        for wr in writers.values():
            counts.update({k: v for k, v in wr.counts.items() if not k.startswith("reason:")})
            counts["cached"] += wr.cached
        counts["routed"] = len(rows)
        return RewriteShardResult(task, "computed", rows=len(ids), markers=markers, counts=dict(counts),
                                  seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - reported per shard, retried by the next run
        return RewriteShardResult(task, "failed", seconds=time.perf_counter() - t0,
                                  error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")


def _tally(gen: Generator, outs: list[Output], parents: list[Parent], routed: dict[str, list[int]],
           per_parent: dict[int, dict[str, Any]]) -> None:
    """Per-parent counts and the parent's own verdict (ProX) from this batch's candidates."""
    for route, idx in routed.items():
        for k in idx:
            a = per_parent.setdefault(parents[k].row, {"routes": [], "generated": 0, "derived": 0, "dropped": 0,
                                                       "errors": 0, "reasons": Counter(), "keep": True, "reason": None})
            a["routes"].append(route)
            cands = [o.cand for o in outs if o.route == route and o.cand.parent == k]
            for c in cands:
                a["generated"] += 1
                a["derived"] += c.status == "kept"
                a["dropped"] += c.status == "dropped"
                a["errors"] += c.status == "error"
                if c.reason:
                    a["reasons"][c.reason] += 1
            keep, reason = gen.parent_verdict(route, cands)
            if not keep and a["keep"]:
                a["keep"], a["reason"] = False, reason


def result_dict(r: RewriteShardResult) -> dict[str, Any]:
    d = asdict(r)
    d.pop("task")
    return d
