"""``semantic_dedup``: SemDeDup (k-means, within-cluster cosine) plus D4 pruning, a global stage.

Reads the ``embedding`` column of an ``embed`` stage (fed like any upstream column). **Fit**:

1. Streams the corpus in lake order (oldest ingest first), spilling the vectors to a raw file
   that is memory-mapped afterwards, and a key, source and (``survivor: quality``) score per
   document. Documents without an embedding (empty text, a failed request) are left out and
   kept.
2. Seeded spherical k-means (faiss) with ``n_clusters`` centroids [default: one per
   ``docs_per_cluster`` = 1,000 documents] on a seeded sample of at most ``max_train`` vectors.
3. Each document's ``n_probe`` [3] nearest centroids; the nearest is its ``cluster``.
4. One cluster at a time: cosine similarities of its members with each other and with its
   guests (documents whose 2nd..``n_probe``-th nearest centroid it is, so a pair split across
   two clusters is still compared), by blocked matrix products. A pair whose cosine is at least
   ``1 - eps`` [eps 0.05: cosine 0.95] is a duplicate pair (exactly: cells near the threshold
   are decided in float64). Duplicate pairs are joined into groups (connected components,
   ``sem_group``).
5. One document per group survives, by ``survivor``: ``farthest`` [default; the SemDeDup paper's
   choice: the member least similar to its cluster centroid], ``quality`` (highest
   ``score_column``, feed it with ``inputs:``), ``source_priority`` (first source of
   ``source_priority``), ``first`` (earliest in lake order). Ties go to the earliest.
6. D4 (``d4_fraction``, off by default): among the survivors of each cluster, the most
   prototypical documents (highest cosine to the centroid) are pruned until ``d4_fraction`` of
   them remain (rounded up); ``d4_keep`` is that selection (= ``keep`` when D4 is off).

**Apply** writes per document: ``keep``/``reason`` (``semantic_duplicate``), ``cluster`` (null
without an embedding), ``centroid_sim``, ``sem_group`` (the document key of the group's first
document; its own key when alone), ``sem_group_size``, ``survivor_id``, ``nearest_id`` and
``nearest_sim`` (the most similar other document seen in its own and its probed clusters: a
duplicate when ``nearest_sim >= 1 - eps``), ``d4_keep``.

The artifact holds ``catalog/semantic_groups.parquet`` (every group of 2+: size, survivor,
sources) and ``catalog/semantic_sources.parquet`` (per source: documents, groups, duplicates,
D4 prunes), loaded into the catalog tables of the same names, and ``pairs.parquet`` with every
duplicate pair when ``record_pairs`` is on. Deterministic given ``seed``, ``threads`` and the
lake order. Memory: see filters/semdedup/core.py (per-document arrays are memory-mapped).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import GlobalStage, StageContext, register_stage
from filters.semdedup import core

KEY_COLUMNS = ("id", "source", "ingest_run", "src_file", "src_offset")


class SemDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    eps: float = Field(0.05, gt=0.0, lt=1.0)
    """Documents at cosine 1 - eps or more are duplicates; all but a group's survivor dropped (``semantic_duplicate``)."""
    n_clusters: int | None = Field(None, ge=1)
    """k-means centroids; null: one per ``docs_per_cluster`` documents."""
    docs_per_cluster: int = Field(1000, ge=2)
    """Documents per centroid when ``n_clusters`` is null."""
    n_probe: int = Field(3, ge=1, le=64)
    """Nearest clusters each document is compared within (pairs split by a cluster boundary are found)."""
    seed: int = 0
    """Seed of the k-means sample and initialisation."""
    kmeans_iters: int = Field(20, ge=1, le=1000)
    """k-means iterations."""
    max_train: int = Field(100_000, ge=100)
    """Vectors sampled to train k-means."""
    threads: int = Field(0, ge=0, le=256)
    """Threads for the matrix products (0: all cores)."""
    survivor: Literal["farthest", "quality", "source_priority", "first"] = "farthest"
    """Which member of a group stays: ``farthest`` from its centroid (SemDeDup), highest ``quality``,
    ``source_priority``, ``first`` in lake order."""
    score_column: str = "score"
    """The score column fed in for ``survivor: quality``."""
    source_priority: list[str] = []
    """Sources in order of preference for ``survivor: source_priority``."""
    d4_fraction: float | None = Field(None, gt=0.0, le=1.0)
    """D4: keep this share of each cluster's survivors in ``d4_keep`` (the least prototypical); null: off."""
    record_pairs: bool = False
    """Write every duplicate pair to the artifact's ``pairs.parquet``."""
    largest_groups: int = Field(20, ge=0)
    """Groups listed in the fit's metrics."""


def embedding_matrix(col: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, valid) of an ``embedding`` column: a fixed-size list of floats per row; null,
    non-finite or zero rows are not valid."""
    arr = col.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_fixed_size_list(arr.type) or not pa.types.is_floating(arr.type.value_type):
        raise ValueError(f"semantic_dedup: the embedding column must be a fixed-size list of floats, not {arr.type} "
                         "(run an embed stage before it, or name one with inputs: {embedding: STAGE.embedding})")
    dim, n = arr.type.list_size, len(arr)
    values = arr.values.to_numpy(zero_copy_only=False)[arr.offset * dim:(arr.offset + n) * dim].reshape(n, dim)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    finite = np.isfinite(values).all(axis=1) & (np.abs(values).sum(axis=1) > 0)
    return values, valid & finite


@register_stage
class SemanticDedup(GlobalStage):
    kind = "semantic_dedup"
    version = "1"
    requires = {"semantic": ("faiss",)}
    needs = (*KEY_COLUMNS, "embedding", "score")
    Params = SemDedupParams

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, upstream: dict[str, str] | None = None):
        super().__init__(params, upstream)
        p: SemDedupParams = self.params  # type: ignore[assignment]
        cols = [*KEY_COLUMNS, "embedding"] + ([p.score_column] if p.survivor == "quality" else [])
        self._fit_needs = tuple(dict.fromkeys(cols))
        self.needs = self._fit_needs  # type: ignore[misc,assignment]

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "cluster": pa.int32(), "centroid_sim": pa.float32(),
                "sem_group": pa.uint64(), "sem_group_size": pa.int64(), "survivor_id": pa.string(),
                "nearest_id": pa.string(), "nearest_sim": pa.float32(), "d4_keep": pa.bool_()}

    # --- fit --------------------------------------------------------------------------------
    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        p: SemDedupParams = self.params  # type: ignore[assignment]
        self.needs = self._fit_needs  # type: ignore[misc,assignment]
        t0 = time.perf_counter()
        seconds: dict[str, float] = {}
        spill = f"{artifact_dir}/_spill"
        scan = _Scan(spill, p)
        for batch in batches:
            scan.add(batch)
        vectors, valid, meta = scan.finish()
        n = len(valid)
        n_valid = int(np.count_nonzero(valid)) if n else 0
        seconds["scan"] = time.perf_counter() - t0
        threshold = 1.0 - p.eps
        k = p.n_clusters or core.auto_clusters(n_valid, p.docs_per_cluster)
        k = max(1, min(k, max(n_valid, 1)))
        t = time.perf_counter()
        if n_valid:
            centroids, sample = core.train_centroids(vectors, valid, k, p.seed, p.kmeans_iters, p.max_train, p.threads)
        else:
            centroids, sample = np.zeros((1, max(vectors.shape[1], 1)), np.float32), 0
        k = len(centroids)
        np.save(f"{artifact_dir}/centroids.npy", centroids)
        seconds["kmeans"] = time.perf_counter() - t
        t = time.perf_counter()
        probe, probe_sims = core.assign(vectors, valid, centroids, p.n_probe, spill)
        members, m_off = core.bucket_positions(probe[:, 0], k, f"{spill}/members.npy")
        guests, g_off = core.bucket_positions(probe[:, 1:], k, f"{spill}/guests.npy")
        seconds["assign"] = time.perf_counter() - t
        t = time.perf_counter()
        search = core.ClusterSearch(vectors, threshold, spill, record_pairs=p.record_pairs)
        for c in range(k):
            search.cluster(np.asarray(members[m_off[c]:m_off[c + 1]]), np.asarray(guests[g_off[c]:g_off[c + 1]]))
        search.close()
        seconds["search"] = time.perf_counter() - t
        t = time.perf_counter()
        labels = core.components(n, search.edges, spill)
        seconds["components"] = time.perf_counter() - t
        t = time.perf_counter()
        groups = self._survivors(labels, probe_sims, meta)
        keep, survivor, size = _per_document(n, groups, spill)
        d4 = _d4(keep, valid, probe, probe_sims, members, m_off, p.d4_fraction, spill)
        seconds["survivors"] = time.perf_counter() - t
        t = time.perf_counter()
        _write_documents(artifact_dir, meta, probe, probe_sims, labels, size, keep, survivor, search, d4)
        summary = _catalog_tables(artifact_dir, groups, meta, valid, keep, d4, p.largest_groups)
        if p.record_pairs:
            pairs = core.read_pairs(spill)
            ids = meta.ids
            pq.write_table(pa.table({"id_a": ids.take(pa.array(pairs["a"])), "id_b": ids.take(pa.array(pairs["b"])),
                                     "pos_a": pairs["a"], "pos_b": pairs["b"], "sim": pairs["sim"]}),
                           f"{artifact_dir}/pairs.parquet")
        seconds["write"] = time.perf_counter() - t
        stats = search.stats
        del vectors, valid, probe, probe_sims, members, guests, labels, keep, survivor, size, d4, search, meta
        shutil.rmtree(spill, ignore_errors=True)
        seconds["total"] = time.perf_counter() - t0
        return {"documents": n, "embedded": n_valid, "clusters": k, "kmeans_sample": sample, "n_probe": p.n_probe,
                "threshold": threshold, "largest_cluster": stats.largest_cluster, "similarities": stats.compared,
                "candidate_pairs": stats.candidates, "duplicate_pairs": stats.pairs, **summary,
                "seconds": {a: round(b, 3) for a, b in seconds.items()}}

    def _survivors(self, labels: np.ndarray, probe_sims: np.ndarray, meta: _Meta) -> pl.DataFrame:
        """One row per document in a group of 2+: pos, group root, size, survivor pos."""
        p: SemDedupParams = self.params  # type: ignore[assignment]
        parts = []
        n = len(labels)
        for s in range(0, n, core.ROWS_PER_STEP):
            lab = np.asarray(labels[s:s + core.ROWS_PER_STEP])
            pos = np.arange(s, s + len(lab))
            parts.append(pos[lab != pos])
        nonroot = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        pos = np.union1d(nonroot, np.asarray(labels[nonroot])) if len(nonroot) else np.zeros(0, np.int64)
        frame = pl.DataFrame({
            "pos": pos, "root": np.asarray(labels[pos]), "centroid_sim": np.asarray(probe_sims[pos, 0]),
            "score": np.asarray(meta.score[pos]), "source": np.asarray(meta.source[pos]),
        }, schema={"pos": pl.Int64, "root": pl.Int64, "centroid_sim": pl.Float32, "score": pl.Float32,
                   "source": pl.Int32})
        if p.survivor == "farthest":
            order, desc = ["centroid_sim", "pos"], [False, False]
        elif p.survivor == "quality":
            frame = frame.with_columns(pl.col("score").fill_nan(None))
            order, desc = ["score", "pos"], [True, False]
        elif p.survivor == "source_priority":
            rank = {meta.source_names.index(s): i for i, s in enumerate(p.source_priority) if s in meta.source_names}
            frame = frame.with_columns(pl.col("source").replace_strict(rank, default=len(p.source_priority),
                                                                        return_dtype=pl.Int64).alias("_rank"))
            order, desc = ["_rank", "pos"], [False, False]
        else:
            order, desc = ["pos"], [False]
        ranked = frame.sort(["root", *order], descending=[False, *desc], nulls_last=True)
        groups = ranked.group_by("root", maintain_order=True).agg(
            pl.col("pos").first().alias("survivor"), pl.len().cast(pl.Int64).alias("size"))
        return ranked.select("pos", "root", "source").join(groups, on="root", how="left").sort("pos")

    # --- apply ------------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir, "semantic_dedup needs its fitted artifact"
        self.needs = KEY_COLUMNS  # type: ignore[misc,assignment]  # the apply joins on the document key only
        self._keys = np.load(f"{ctx.artifact_dir}/keys_sorted.npy", mmap_mode="r")
        self._order = np.load(f"{ctx.artifact_dir}/keys_order.npy", mmap_mode="r")
        self._docs = pa.ipc.open_file(pa.memory_map(f"{ctx.artifact_dir}/documents.arrow")).read_all()

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        from filters.minhash.dedup import document_keys
        keys = document_keys(batch)
        n = len(keys)
        if len(self._keys):
            idx = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            found = np.asarray(self._keys[idx]) == keys
        else:
            idx, found = np.zeros(n, np.int64), np.zeros(n, bool)
        if not found.all():
            raise ValueError(f"semantic_dedup: {int((~found).sum())} documents were not in the fit "
                             "(the artifact is stale: re-run the pipeline)")
        rows = self._docs.take(pa.array(np.asarray(self._order[idx]))) if n else self._docs.slice(0, 0)
        ids = self._docs.column("id")
        surv = rows.column("survivor_pos").to_numpy()
        near = rows.column("nearest_pos")
        near_np = near.to_numpy(zero_copy_only=False)
        has_near = ~np.asarray(near.is_null().to_numpy(zero_copy_only=False))
        nearest_id = pa.array([None] * n, pa.string())
        if has_near.any():
            taken = ids.take(pa.array(np.where(has_near, near_np, 0).astype(np.int64)))
            nearest_id = pa.compute.if_else(pa.array(has_near), taken, pa.scalar(None, pa.string()))
        keep = rows.column("keep")
        return pl.DataFrame({
            "keep": pl.Series(keep),
            "reason": pl.Series(pa.compute.if_else(keep, pa.scalar(None, pa.string()), "semantic_duplicate")),
            "cluster": pl.Series(rows.column("cluster")),
            "centroid_sim": pl.Series(rows.column("centroid_sim")),
            "sem_group": pl.Series(rows.column("sem_group")),
            "sem_group_size": pl.Series(rows.column("sem_group_size")),
            "survivor_id": pl.Series(ids.take(pa.array(surv))) if n else pl.Series([], dtype=pl.String),
            "nearest_id": pl.Series(nearest_id),
            "nearest_sim": pl.Series(rows.column("nearest_sim")),
            "d4_keep": pl.Series(rows.column("d4_keep")),
        })


# ----------------------------------------------------------------------------------------------
# fit helpers
# ----------------------------------------------------------------------------------------------
class _Meta:
    """Per-document metadata of the fit, in lake order: keys, source codes, scores (memory-mapped
    .npy files) and ids (an Arrow IPC file, memory-mapped)."""

    def __init__(self, folder: str, n: int, source_names: list[str]):
        self.source_names = source_names
        self.keys = np.load(f"{folder}/keys.npy", mmap_mode="r") if n else np.zeros(0, np.uint64)
        self.source = np.load(f"{folder}/source.npy", mmap_mode="r") if n else np.zeros(0, np.int32)
        self.score = np.load(f"{folder}/score.npy", mmap_mode="r") if n else np.zeros(0, np.float32)
        self.ids = (pa.ipc.open_file(pa.memory_map(f"{folder}/ids.arrow")).read_all().column("id") if n
                    else pa.chunked_array([pa.array([], pa.string())]))


class _Scan:
    """The streaming pass of the fit: vectors to a raw spill, metadata to growing files."""

    def __init__(self, folder: str, p: SemDedupParams):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.p = folder, p
        self.vectors: core.VectorSpill | None = None
        self.keys = open(f"{folder}/keys.bin", "wb")
        self.source = open(f"{folder}/source.bin", "wb")
        self.score = open(f"{folder}/score.bin", "wb")
        self.ids: pa.ipc.RecordBatchFileWriter | None = None
        self.sources: dict[str, int] = {}
        self.n = 0

    def add(self, batch: pl.DataFrame) -> None:
        from filters.minhash.dedup import document_keys
        if batch.height == 0:
            return
        missing = [c for c in self._needed() if c not in batch.columns]
        if missing:
            raise ValueError(f"semantic_dedup: columns {missing} are missing; run an embed stage before it"
                             + (f" and feed {self.p.score_column!r} (inputs:)" if self.p.score_column in missing else ""))
        vecs, valid = embedding_matrix(batch.get_column("embedding"))
        if self.vectors is None:
            dtype = "float16" if vecs.dtype == np.float16 else "float32"
            self.vectors = core.VectorSpill(self.folder, vecs.shape[1], dtype)
        elif vecs.shape[1] != self.vectors.dim:
            raise ValueError(f"semantic_dedup: embeddings of {vecs.shape[1]} and {self.vectors.dim} dimensions "
                             "in one corpus (two embed configurations?)")
        self.vectors.add(vecs, valid)
        self.keys.write(document_keys(batch).astype(np.uint64).tobytes())
        codes = [self.sources.setdefault(s, len(self.sources)) for s in batch.get_column("source").to_list()]
        self.source.write(np.array(codes, dtype=np.int32).tobytes())
        if self.p.survivor == "quality":
            score = batch.get_column(self.p.score_column).cast(pl.Float32).fill_null(np.nan).to_numpy()
        else:
            score = np.full(batch.height, np.nan, np.float32)
        self.score.write(np.asarray(score, dtype=np.float32).tobytes())
        ids = pa.record_batch([batch.get_column("id").cast(pl.String).to_arrow()], names=["id"])
        if self.ids is None:
            self.ids = pa.ipc.new_file(f"{self.folder}/ids.arrow", ids.schema)
        self.ids.write_batch(ids)
        self.n += batch.height

    def _needed(self) -> list[str]:
        return [*KEY_COLUMNS, "embedding"] + ([self.p.score_column] if self.p.survivor == "quality" else [])

    def finish(self) -> tuple[np.ndarray, np.ndarray, _Meta]:
        for f in (self.keys, self.source, self.score):
            f.close()
        if self.ids is not None:
            self.ids.close()
        for name, dtype in (("keys", np.uint64), ("source", np.int32), ("score", np.float32)):
            raw = np.memmap(f"{self.folder}/{name}.bin", dtype=dtype, mode="r") if self.n else np.zeros(0, dtype)
            out = core.open_array(f"{self.folder}/{name}.npy", dtype, (self.n,))
            for s in range(0, self.n, core.ROWS_PER_STEP):
                out[s:s + core.ROWS_PER_STEP] = raw[s:s + core.ROWS_PER_STEP]
            del raw, out
            os.remove(f"{self.folder}/{name}.bin")
        if self.vectors is None:
            vectors, valid = np.zeros((0, 1), np.float32), np.zeros(0, bool)
        else:
            vectors, valid = self.vectors.finish()
        return vectors, valid, _Meta(self.folder, self.n, list(self.sources))


def _per_document(n: int, groups: pl.DataFrame, folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """keep, survivor position and group size of every document (memory-mapped)."""
    keep = core.open_array(f"{folder}/keep.npy", np.bool_, (n,))
    survivor = core.open_array(f"{folder}/survivor.npy", np.int64, (n,))
    size = core.open_array(f"{folder}/size.npy", np.int64, (n,))
    for s in range(0, n, core.ROWS_PER_STEP):
        e = min(n, s + core.ROWS_PER_STEP)
        keep[s:e] = True
        survivor[s:e] = np.arange(s, e)
        size[s:e] = 1
    if groups.height:
        pos = groups.get_column("pos").to_numpy()
        surv = groups.get_column("survivor").to_numpy()
        survivor[pos] = surv
        size[pos] = groups.get_column("size").to_numpy()
        keep[pos] = pos == surv
    return keep, survivor, size


def _d4(keep: np.ndarray, valid: np.ndarray, probe: np.ndarray, probe_sims: np.ndarray, members: np.ndarray,
        offsets: np.ndarray, fraction: float | None, folder: str) -> np.ndarray:
    """D4's prototype pruning per cluster: of each cluster's SemDeDup survivors keep the
    ``fraction`` (rounded up) least similar to the centroid; documents outside clusters stay."""
    n = len(keep)
    d4 = core.open_array(f"{folder}/d4.npy", np.bool_, (n,))
    for s in range(0, n, core.ROWS_PER_STEP):
        d4[s:s + core.ROWS_PER_STEP] = keep[s:s + core.ROWS_PER_STEP]
    if fraction is None or fraction >= 1.0:
        return d4
    for c in range(len(offsets) - 1):
        mem = np.asarray(members[offsets[c]:offsets[c + 1]])
        mem = mem[np.asarray(keep[mem])]
        if not len(mem):
            continue
        n_keep = math.ceil(fraction * len(mem))
        sims = np.asarray(probe_sims[mem, 0])
        order = np.lexsort((mem, -sims))  # most prototypical first; ties: earliest first
        d4[mem[order[:len(mem) - n_keep]]] = False
    return d4


def _write_documents(artifact_dir: str, meta: _Meta, probe: np.ndarray, probe_sims: np.ndarray, labels: np.ndarray,
                     size: np.ndarray, keep: np.ndarray, survivor: np.ndarray, search: core.ClusterSearch,
                     d4: np.ndarray) -> None:
    """``documents.arrow`` (one row per document, lake order; memory-mapped by the apply) and the
    key index (``keys_sorted.npy``, ``keys_order.npy``)."""
    n = len(keep)
    schema = pa.schema([("id", pa.string()), ("cluster", pa.int32()), ("centroid_sim", pa.float32()),
                        ("sem_group", pa.uint64()), ("sem_group_size", pa.int64()), ("keep", pa.bool_()),
                        ("survivor_pos", pa.int64()), ("nearest_pos", pa.int64()), ("nearest_sim", pa.float32()),
                        ("d4_keep", pa.bool_())])
    with pa.ipc.new_file(f"{artifact_dir}/documents.arrow", schema) as w:
        for s in range(0, n, core.ROWS_PER_STEP):
            e = min(n, s + core.ROWS_PER_STEP)
            cl = np.asarray(probe[s:e, 0])
            inside = cl >= 0
            near = np.asarray(search.nearest_pos[s:e])
            has = near >= 0
            w.write_batch(pa.record_batch([
                meta.ids.slice(s, e - s).combine_chunks(),
                pa.array(cl, mask=~inside),
                pa.array(np.asarray(probe_sims[s:e, 0]), mask=~inside),
                pa.array(np.asarray(meta.keys[np.asarray(labels[s:e])])),
                pa.array(np.asarray(size[s:e])),
                pa.array(np.asarray(keep[s:e])),
                pa.array(np.asarray(survivor[s:e])),
                pa.array(near, mask=~has),
                pa.array(np.asarray(search.nearest_sim[s:e]), mask=~has),
                pa.array(np.asarray(d4[s:e])),
            ], schema=schema))
    order = np.argsort(np.asarray(meta.keys), kind="stable")
    np.save(f"{artifact_dir}/keys_sorted.npy", np.asarray(meta.keys)[order])
    np.save(f"{artifact_dir}/keys_order.npy", order)


def _catalog_tables(artifact_dir: str, groups: pl.DataFrame, meta: _Meta, valid: np.ndarray, keep: np.ndarray,
                    d4: np.ndarray, largest: int) -> dict[str, Any]:
    """``catalog/semantic_groups.parquet`` and ``catalog/semantic_sources.parquet``; returns the
    metrics for the catalog's artifacts table."""
    os.makedirs(f"{artifact_dir}/catalog", exist_ok=True)
    names = meta.source_names
    ids = meta.ids
    g = groups.with_columns(pl.col("source").replace_strict(dict(enumerate(names)), return_dtype=pl.String))
    table = g.group_by("root", maintain_order=True).agg(
        pl.col("size").first(), pl.col("survivor").first(),
        pl.col("source").filter(pl.col("pos") == pl.col("survivor")).first().alias("survivor_source"),
        pl.col("source").unique().sort().alias("sources"))
    roots = table.get_column("root").to_numpy()
    surv = table.get_column("survivor").to_numpy()
    out = table.select(
        pl.Series("sem_group", np.asarray(meta.keys[roots]) if len(roots) else np.zeros(0, np.uint64),
                  dtype=pl.UInt64),
        pl.col("size").alias("sem_group_size"),
        pl.Series("survivor_id", ids.take(pa.array(surv)) if len(surv) else pa.array([], pa.string())),
        "survivor_source", "sources")
    out.write_parquet(f"{artifact_dir}/catalog/semantic_groups.parquet")
    n = len(keep)
    src = np.asarray(meta.source) if n else np.zeros(0, np.int32)
    v, k, d = np.asarray(valid), np.asarray(keep), np.asarray(d4)
    per_groups = (g.group_by("source").agg(pl.col("root").n_unique().alias("groups"),
                                           pl.len().alias("in_groups")) if g.height else
                  pl.DataFrame(schema={"source": pl.String, "groups": pl.UInt32, "in_groups": pl.UInt32}))
    rows = []
    for code, name in enumerate(names):
        mine = src == code
        rows.append({"source": name, "documents": int(mine.sum()), "embedded": int((mine & v).sum()),
                     "duplicates": int((mine & ~k).sum()), "d4_pruned": int((mine & k & ~d).sum())})
    sources = (pl.DataFrame(rows, schema={"source": pl.String, "documents": pl.Int64, "embedded": pl.Int64,
                                          "duplicates": pl.Int64, "d4_pruned": pl.Int64})
               .join(per_groups, on="source", how="left")
               .select("source", "documents", "embedded", pl.col("groups").fill_null(0).cast(pl.Int64),
                       pl.col("in_groups").fill_null(0).cast(pl.Int64), "duplicates", "d4_pruned"))
    sources.write_parquet(f"{artifact_dir}/catalog/semantic_sources.parquet")
    top = out.sort(["sem_group_size", "sem_group"], descending=[True, False]).head(largest)
    return {"groups": out.height, "duplicates": int((~k).sum()), "d4_pruned": int((k & ~d).sum()),
            "duplicates_by_source": {r["source"]: r["duplicates"] for r in rows if r["duplicates"]},
            "largest_groups": [{**r, "sem_group": str(r["sem_group"])} for r in top.to_dicts()]}
