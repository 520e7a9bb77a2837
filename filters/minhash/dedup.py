"""``minhash_dedup``: near-duplicate clusters from MinHash LSH band keys (a global stage).

**Fit** (one pass over every shard's ``minhash_bands`` from ``minhash_signatures``, plus the
provenance columns, plus the text when ``verify`` is on):

1. Streams the batches, numbering documents in lake order (``pos``). Band keys go to
   ``buckets/part-XX.parquet`` (``key``, ``pos``), partitioned by the key's top bits; document
   metadata goes to a spill file; with ``verify`` each document's shingle set (its
   ``max_shingles`` smallest distinct 32-bit shingle values, i.e. all of them for documents up to
   that size) is derived from the text and appended to a flat spill file. Memory: one batch plus
   small write buffers.
2. Per bucket partition: rows whose key occurs more than once are sorted by (key, pos); each
   bucket member is paired with the bucket's first member and with up to ``window`` members
   before it. Pairs are spilled, partitioned again, and de-duplicated per partition.
3. With ``verify`` (default) each unique candidate pair's Jaccard is computed from the spilled
   shingle sets (exact for documents up to ``max_shingles`` distinct shingles, a bottom-k
   estimate beyond) and kept only when it is at least ``threshold``. Without it every
   candidate is kept.
4. Union-find over the kept pairs (the larger root always joins the smaller, so components do
   not depend on edge order); the survivor of each cluster is chosen by ``survivor``.
5. Writes ``assignment.parquet`` (one row per document in a cluster of 2 or more: document key,
   cluster id, size, survivor id, survivor flag), ``largest_clusters.parquet`` and returns
   metrics (duplicates per source, the largest clusters) that the catalog records.

Memory in the fit: 17 bytes per document (union-find parent, shingle offset, a flag), plus one
bucket partition (about 16 x bands x documents / partitions bytes) and one pair partition at a
time. Signatures are never all in memory.

**Apply** (per shard): a document in a cluster that is not its survivor gets ``keep=false``,
``reason="near_duplicate"``; every document gets ``cluster_id`` (the smallest document key of
its cluster; its own key when alone), ``cluster_size`` (1 when alone) and ``survivor_id``.
Documents without a signature (empty after normalisation, or a failed signature row) are kept
as singletons.

Survivor policies (``survivor``): ``first`` (default: earliest in lake order, as exact_dedup),
``min_id`` (smallest document id: independent of lake order), ``quality`` (highest
``score_column``, nulls last), ``source_priority`` (first source in ``source_priority``; sources
not listed come after), ``newest`` (latest ``crawl_date``, nulls last). Ties go to ``first``.

The document key is FNV-1a 64 (+ fmix64) of ``id, source, ingest_run, src_file, src_offset``
joined by U+001F: unique per raw row and stable across runs.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from engines.stage import GlobalStage, StageContext, register_stage
from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashParams, SignatureComputer, string_buffers

KEY_COLUMNS = ("id", "source", "ingest_run", "src_file", "src_offset")
FLUSH_ROWS = 1 << 18  # buffered (key, pos) rows before the partitions are written (4 MB)


class MinHashDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A verified candidate pair is a near duplicate when its Jaccard is at least this.
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    verify: bool = True
    # Verification re-derives shingle sets from the text: use the same ngram / fold_digits as
    # minhash_signatures. Documents with more distinct shingles keep a bottom-k sample this big.
    ngram: int = Field(5, ge=1, le=64)
    fold_digits: bool = False
    max_shingles: int = Field(4096, ge=16)
    threads: int = Field(0, ge=0, le=256)
    survivor: Literal["first", "min_id", "quality", "source_priority", "newest"] = "first"
    score_column: str = "score"
    source_priority: list[str] = []
    partitions: int = Field(64, ge=1, le=4096)
    window: int = Field(8, ge=1, le=1024)
    largest_clusters: int = Field(20, ge=0)


def document_keys(frame: pl.DataFrame) -> np.ndarray:
    """The 64-bit key of each row (see the module docstring)."""
    from filters.minhash import kernels as k
    joined = frame.select(pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in KEY_COLUMNS],
                                        separator="\x1f").alias("k")).to_series()
    return k.fnv_strings_kernel(*string_buffers(joined))


def _list_parts(col: pl.Series, value_type: Any) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, per-row lengths) of a Polars list column; null rows have length 0."""
    arr = col.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(value_type, copy=False)
    return values, lengths


class _PartitionedWriter:
    """Buffers (key, value) rows and appends them to one Parquet file per partition, chosen by
    the key's top bits; rows keep their arrival order inside a partition."""

    def __init__(self, folder: str, partitions: int, schema: pa.Schema):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.partitions, self.schema = folder, partitions, schema
        self.buf: list[tuple[np.ndarray, np.ndarray]] = []
        self.rows = 0
        self.writers: dict[int, pq.ParquetWriter] = {}

    def path(self, p: int) -> str:
        return f"{self.folder}/part-{p:04d}.parquet"

    def part_of(self, keys: np.ndarray) -> np.ndarray:
        """Partition of each key from its top 32 bits (multiply-shift range reduction)."""
        return (((keys >> np.uint64(32)) * np.uint64(self.partitions)) >> np.uint64(32)).astype(np.int64)

    def add(self, keys: np.ndarray, pos: np.ndarray) -> None:
        if len(keys):
            self.buf.append((keys, pos))
            self.rows += len(keys)
            if self.rows >= FLUSH_ROWS:
                self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        keys = np.concatenate([k for k, _ in self.buf])
        pos = np.concatenate([p for _, p in self.buf])
        self.buf, self.rows = [], 0
        part = self.part_of(keys)
        order = np.argsort(part, kind="stable")  # keeps pos ascending inside each partition
        bounds = np.searchsorted(part[order], np.arange(self.partitions + 1))
        for p in range(self.partitions):
            sel = order[bounds[p]:bounds[p + 1]]
            if not len(sel):
                continue
            w = self.writers.get(p)
            if w is None:
                w = self.writers[p] = pq.ParquetWriter(self.path(p), self.schema, compression="zstd",
                                                       compression_level=1)
            w.write_table(pa.table([pa.array(keys[sel]), pa.array(pos[sel])], schema=self.schema))

    def close(self) -> list[str]:
        self.flush()
        for w in self.writers.values():
            w.close()
        return [self.path(p) for p in sorted(self.writers)]


BUCKET_SCHEMA = pa.schema([pa.field("key", pa.uint64()), pa.field("pos", pa.int64())])
# A candidate pair is coded as lo << 32 | hi (positions); "mix" only spreads pairs over partitions.
PAIR_SCHEMA = pa.schema([pa.field("mix", pa.uint64()), pa.field("pair", pa.int64())])


@register_stage
class MinHashDedup(GlobalStage):
    kind = "minhash_dedup"
    version = "1"
    # The flow feeds the band columns from minhash_signatures (and a score column when a scorer
    # writes one); the rest are document columns. The text is read by the fit only (verify).
    needs = ("id", "source", "ingest_run", "src_file", "src_offset", "crawl_date", "text",
             BANDS_COLUMN, COUNT_COLUMN, "score")
    Params = MinHashDedupParams

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, upstream: dict[str, str] | None = None):
        super().__init__(params, upstream)
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        cols = [c for c in type(self).needs if c not in ("text", "score")]
        if p.verify:
            cols.append("text")
        if p.survivor == "quality":
            cols.append(p.score_column)
        self._fit_needs = tuple(dict.fromkeys(cols))
        self.needs = self._fit_needs  # type: ignore[misc]

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "cluster_id": pa.uint64(), "cluster_size": pa.int64(),
                "survivor_id": pa.string()}

    # --- fit --------------------------------------------------------------------------------
    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        from filters.minhash import kernels as k
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        self.needs = self._fit_needs  # type: ignore[misc]  # (the executor reads batches lazily, after this)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        spill = f"{artifact_dir}/_spill"
        os.makedirs(spill, exist_ok=True)
        buckets = _PartitionedWriter(f"{artifact_dir}/buckets", p.partitions, BUCKET_SCHEMA)
        meta_writer: pq.ParquetWriter | None = None
        shingle_file = open(f"{spill}/shingles.u32", "wb") if p.verify else None
        shingler = SignatureComputer(MinHashParams(ngram=p.ngram, fold_digits=p.fold_digits, threads=p.threads))
        sh_offsets: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        full_flags: list[np.ndarray] = []
        n_docs = n_empty = 0
        sh_total = 0
        n_bands: int | None = None
        try:
            for batch in batches:
                n = batch.height
                if n == 0:
                    continue
                missing = [c for c in self.needs if c not in batch.columns]
                if missing:
                    raise ValueError(f"minhash_dedup: columns {missing} are missing; run minhash_signatures before it"
                                     + (f", and a stage writing {p.score_column!r}" if p.score_column in missing else ""))
                pos = np.arange(n_docs, n_docs + n, dtype=np.int64)
                values, lengths = _list_parts(batch.get_column(BANDS_COLUMN), np.uint64)
                counts = batch.get_column(COUNT_COLUMN).fill_null(0).to_numpy().astype(np.int64)
                if n_bands is None and (lengths > 0).any():
                    n_bands = int(lengths[lengths > 0][0])
                good = (lengths > 0) & (counts > 0)
                n_empty += int(n - good.sum())
                row_of_value = np.repeat(np.arange(n), lengths)
                keep_values = good[row_of_value]
                buckets.add(values[keep_values], pos[row_of_value[keep_values]])
                meta = batch.select(
                    pl.Series("pos", pos), pl.Series("key", document_keys(batch)), pl.col("id"), pl.col("source"),
                    pl.col("crawl_date"),
                    (pl.col(p.score_column).cast(pl.Float64) if p.survivor == "quality"
                     else pl.lit(None, pl.Float64)).alias("score"))
                table = meta.to_arrow()
                if meta_writer is None:
                    meta_writer = pq.ParquetWriter(f"{spill}/docs.parquet", table.schema, compression="zstd",
                                                   compression_level=1)
                meta_writer.write_table(table.cast(meta_writer.schema))
                if shingle_file is not None:
                    # Bottom-k shingle sets for verification, derived from the text (all of a
                    # document's shingles up to max_shingles distinct ones).
                    _, n_distinct, sv, soff = shingler.compute(batch.get_column("text"), p.max_shingles,
                                                               band_keys=False)
                    sl = np.diff(soff)
                    sl = np.where(good, sl, 0)
                    sv = sv[good[np.repeat(np.arange(n), np.diff(soff))]]
                    shingle_file.write(np.ascontiguousarray(sv, dtype=np.uint32).tobytes())
                    sh_offsets.append(sh_total + np.cumsum(sl))
                    sh_total += int(sl.sum())
                    full_flags.append(n_distinct <= p.max_shingles)
                n_docs += n
        finally:
            if shingle_file is not None:
                shingle_file.close()
            if meta_writer is not None:
                meta_writer.close()
        bucket_files = buckets.close()
        pa.default_memory_pool().release_unused()
        if n_docs >= 1 << 32:
            raise ValueError("minhash_dedup codes candidate pairs in 64 bits: at most 2^32 documents per fit")
        timings["scan_s"] = time.perf_counter() - t0

        # Candidate pairs, per bucket partition, spilled and partitioned again by pair code.
        t1 = time.perf_counter()
        pairs = _PartitionedWriter(f"{spill}/pairs", p.partitions, PAIR_SCHEMA)
        bucket_pairs = 0  # before de-duplication across partitions
        largest_bucket = 0
        for path in bucket_files:
            f = pl.read_parquet(path).filter(pl.col("key").is_duplicated()).sort("key", "pos")
            if f.height == 0:
                continue
            keys = f.get_column("key").to_numpy()
            posv = f.get_column("pos").to_numpy()
            lo, hi = k.bucket_pairs_kernel(keys, posv, p.window)
            code = np.unique((lo.astype(np.uint64) << np.uint64(32)) | hi.astype(np.uint64))
            bucket_pairs += len(code)
            largest_bucket = max(largest_bucket, int(f.group_by("key").len().get_column("len").max() or 0))
            # Partition by a mix of the code so each pair partition gets a fair share.
            mixed = code * np.uint64(0x9E3779B97F4A7C15)
            pairs.add(mixed, code.view(np.int64))
        pair_files = pairs.close()
        timings["candidates_s"] = time.perf_counter() - t1

        # Verify and union.
        t2 = time.perf_counter()
        parent = np.arange(n_docs, dtype=np.int64)
        offsets = np.concatenate(sh_offsets) if p.verify else None
        full = np.concatenate(full_flags) if (p.verify and full_flags) else np.zeros(0, dtype=bool)
        candidates = accepted = 0
        sims_hist = np.zeros(20, dtype=np.int64)
        fd = os.open(f"{spill}/shingles.u32", os.O_RDONLY) if p.verify else None
        for path in pair_files:
            code = np.unique(pl.read_parquet(path, columns=["pair"]).get_column("pair").to_numpy().view(np.uint64))
            lo = (code >> np.uint64(32)).astype(np.int64)
            hi = (code & np.uint64(0xFFFFFFFF)).astype(np.int64)
            candidates += len(code)
            if p.verify:
                sims = self._similarities(k, fd, offsets, full, lo, hi)
                sims_hist += np.histogram(sims, bins=20, range=(0.0, 1.0))[0]
                ok = sims >= p.threshold
                lo, hi = lo[ok], hi[ok]
            accepted += len(lo)
            k.union_kernel(parent, lo, hi)
        if fd is not None:
            os.close(fd)
        pa.default_memory_pool().release_unused()
        roots = k.roots_kernel(parent)
        timings["verify_union_s"] = time.perf_counter() - t2

        # Clusters and survivors.
        t3 = time.perf_counter()
        sizes = np.bincount(roots, minlength=n_docs) if n_docs else np.zeros(0, np.int64)
        member = sizes[roots] > 1 if n_docs else np.zeros(0, bool)
        members = pl.DataFrame({"pos": np.flatnonzero(member).astype(np.int64), "root": roots[member]})
        del parent, roots, sizes, member
        assignment, clusters, largest = self._survivors(f"{spill}/docs.parquet", members, p.largest_clusters)
        assignment.sort("key").write_parquet(f"{artifact_dir}/assignment.parquet", compression="zstd")
        largest.write_parquet(f"{artifact_dir}/largest_clusters.parquet")
        timings["clusters_s"] = time.perf_counter() - t3
        dup_by_source = (assignment.filter(~pl.col("is_survivor")).group_by("source").len().sort("source"))
        import shutil
        shutil.rmtree(spill, ignore_errors=True)
        return {
            "documents": n_docs, "without_signature": n_empty, "bands": n_bands, "bucket_partitions": len(bucket_files),
            "largest_bucket": largest_bucket, "bucket_pairs": bucket_pairs, "candidate_pairs": candidates, "accepted_pairs": accepted,
            "rejected_pairs": candidates - accepted if p.verify else 0, "verify": p.verify, "threshold": p.threshold,
            "candidate_similarity_histogram": sims_hist.tolist() if p.verify else None,
            "clusters": clusters, "clustered_documents": assignment.height,
            "duplicates": int(assignment.height - clusters),
            "duplicates_by_source": dict(zip(dup_by_source.get_column("source").to_list(),
                                             dup_by_source.get_column("len").to_list())),
            "largest_clusters": [{k2: (str(v) if k2 == "cluster_id" else v) for k2, v in r.items()}
                                 for r in largest.to_dicts()],
            "seconds": {k2: round(v, 3) for k2, v in timings.items()},
        }

    @staticmethod
    def _similarities(k: Any, fd: int | None, offsets: np.ndarray, full: np.ndarray,
                      lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Jaccard of each candidate pair from the spilled shingle sets, reading (pread) only the
        sets of this partition's documents: no mapping, so memory is this partition's sets."""
        if fd is None or not len(lo):
            return np.zeros(len(lo))
        docs, inv = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        starts, ends = offsets[docs], offsets[docs + 1]
        local_off = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=local_off[1:])
        values = np.empty(int(local_off[-1]), dtype=np.uint32)
        view = memoryview(values).cast("B")
        for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):  # one read per document
            if b > a:
                os.preadv(fd, [view[int(local_off[i]) * 4:int(local_off[i + 1]) * 4]], a * 4)
        return k.jaccard_kernel(values, local_off, full[docs], inv[:len(lo)], inv[len(lo):])

    def _survivors(self, docs_path: str, members: pl.DataFrame, top: int
                   ) -> tuple[pl.DataFrame, int, pl.DataFrame]:
        """(assignment, number of clusters, the ``top`` largest clusters). Only the columns the
        policy needs are read for every member; ids only for the survivors."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        cols = ["pos", "key", "source"]
        if p.survivor == "first":
            order, desc = ["pos"], [False]
        elif p.survivor == "min_id":
            order, desc, cols = ["id", "pos"], [False, False], cols + ["id"]
        elif p.survivor == "quality":
            order, desc, cols = ["score", "pos"], [True, False], cols + ["score"]
        elif p.survivor == "newest":
            order, desc, cols = ["crawl_date", "pos"], [True, False], cols + ["crawl_date"]
        else:
            order, desc = ["_rank", "pos"], [False, False]
        if members.height:
            info = (pl.scan_parquet(docs_path).select(cols).join(members.lazy(), on="pos", how="inner")
                    .collect(engine="streaming"))
        else:
            info = pl.DataFrame(schema={"pos": pl.Int64, "key": pl.UInt64, "source": pl.String, "id": pl.String,
                                        "score": pl.Float64, "crawl_date": pl.Datetime("us", "UTC"),
                                        "root": pl.Int64}).select([*cols, "root"])
        if p.survivor == "source_priority":
            rank = {s: i for i, s in enumerate(p.source_priority)}
            info = info.with_columns(pl.col("source").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
                                     .alias("_rank"))
        ranked = info.sort(["root", *order], descending=[False, *desc], nulls_last=True)
        del info
        clusters = ranked.group_by("root", maintain_order=True).agg(
            pl.col("key").min().alias("cluster_id"), pl.len().cast(pl.Int64).alias("cluster_size"),
            pl.col("pos").first().alias("survivor_pos"), pl.col("key").first().alias("survivor_key"))
        ids = pl.DataFrame(schema={"pos": pl.Int64, "id": pl.String})
        if clusters.height:
            ids = (pl.scan_parquet(docs_path).select("pos", "id")
                   .join(clusters.lazy().select(pl.col("survivor_pos").alias("pos")), on="pos", how="inner")
                   .collect(engine="streaming"))
        clusters = clusters.join(ids.rename({"pos": "survivor_pos", "id": "survivor_id"}), on="survivor_pos",
                                 how="left", maintain_order="left")
        assignment = ranked.select("key", "pos", "source", "root").join(
            clusters.select("root", "cluster_id", "cluster_size", "survivor_id", "survivor_key"), on="root").select(
            "key", "pos", "source", "cluster_id", "cluster_size", "survivor_id",
            (pl.col("key") == pl.col("survivor_key")).alias("is_survivor"))
        largest = clusters.sort(["cluster_size", "cluster_id"], descending=[True, False]).head(top)
        sources = (ranked.join(largest.select("root"), on="root").group_by("root")
                   .agg(pl.col("source").first().alias("survivor_source"), pl.col("source").unique().sort().alias("sources")))
        largest = (largest.join(sources, on="root", how="left", maintain_order="left")
                   .select("cluster_id", "cluster_size", "survivor_id", "survivor_source", "sources"))
        return assignment, clusters.height, largest

    # --- apply ------------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir, "minhash_dedup needs its fitted artifact"
        # The per-shard apply joins on the document key only: do not make the executor read text.
        self.needs = tuple(c for c in self._fit_needs if c in KEY_COLUMNS)  # type: ignore[misc]
        # Sorted by key: looked up by binary search (a hash join would rebuild its table per batch).
        t = pq.read_table(f"{ctx.artifact_dir}/assignment.parquet",
                          columns=["key", "cluster_id", "cluster_size", "survivor_id", "is_survivor"],
                          read_dictionary=["survivor_id"]).combine_chunks()
        self._keys = t.column("key").to_numpy()
        self._cluster_id = t.column("cluster_id").to_numpy()
        self._size = t.column("cluster_size").to_numpy()
        self._is_survivor = t.column("is_survivor").to_numpy(zero_copy_only=False)
        self._survivor_id = t.column("survivor_id").chunk(0) if t.num_rows else pa.array([], pa.string())

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        keys = document_keys(batch)
        ids = batch.get_column("id").to_arrow()
        if len(self._keys):
            idx = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            found = self._keys[idx] == keys
        else:
            idx, found = np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        dup = found & ~self._is_survivor[idx] if len(self._keys) else found
        if found.any():
            surv = self._survivor_id.take(pa.array(idx)).cast(pa.string())
            survivor = pa.compute.if_else(pa.array(found), surv, ids.cast(pa.string()))
        else:
            survivor = ids.cast(pa.string())
        out = pl.DataFrame({
            "keep": ~dup,
            "cluster_id": np.where(found, self._cluster_id[idx] if len(self._keys) else keys, keys).astype(np.uint64),
            "cluster_size": np.where(found, self._size[idx] if len(self._keys) else 1, 1).astype(np.int64),
        })
        return out.select(
            "keep",
            pl.when(pl.col("keep")).then(pl.lit(None, pl.String)).otherwise(pl.lit("near_duplicate")).alias("reason"),
            "cluster_id", "cluster_size", pl.from_arrow(survivor).alias("survivor_id"))
