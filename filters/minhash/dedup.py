"""``minhash_dedup``: near-duplicate clusters from MinHash LSH band keys (a global stage).

**Fit** (one pass over every shard's ``minhash_bands`` from ``minhash_signatures``, plus the
provenance columns, plus the text when ``verify`` is on):

1. Streams the batches, numbering documents in lake order (``pos``). Band keys (``key``,
   ``pos``) go to a spill partitioned by the key's top bits (one raw file per partition,
   appended to at each flush; no writer stays open); document metadata goes to a spill file; with ``verify``
   each document's shingle set (its ``max_shingles`` smallest distinct 32-bit shingle values,
   i.e. all of them for documents up to that size) is derived from the text and appended to a
   flat spill file. Memory: one batch plus a 4 MB buffer.
2. Per bucket partition: its files become one file sorted by (key, pos),
   ``buckets/part-XXXX.parquet`` (the band index kept in the artifact); rows whose key occurs
   more than once are paired: each bucket member with the bucket's first member and with up to
   ``window`` members before it. Pairs are spilled, partitioned again, and de-duplicated per
   partition.
3. With ``verify`` (default) each unique candidate pair's Jaccard is computed from the spilled
   shingle sets (exact for documents up to ``max_shingles`` distinct shingles, a bottom-k
   estimate beyond) and kept only when it is at least ``threshold``. Without it every
   candidate is kept.
4. Union-find over the kept pairs (the larger root always joins the smaller, so components do
   not depend on edge order).
5. Survivors (``_survivors``): one pass over the metadata spill sends every document of a
   cluster of 2+ to a partition chosen by its cluster root; each partition (``MEMBERS_PER_PART``
   members) is ranked by the ``survivor`` policy on its own; the rows pass through key-range
   partitions and are written in partition order as ``assignment.parquet`` (one row per
   clustered document: key, source, cluster id, size, survivor id, survivor flag; sorted by
   key), plus ``largest_clusters.parquet``; the metrics (duplicates per source, the largest
   clusters) go to the catalog.

The artifact keeps what a later night needs to extend the fit instead of redoing it: the band
index (``buckets/``), the document metadata (``docs.parquet``), the cluster roots
(``roots.parquet``) and ``state.json``. With ``survivor: first`` the stage is incremental
(``fit_incremental``: filters/minhash/incremental.py); other survivor policies refit.

Memory in the fit: 25 bytes per document (union-find parent and root 8 + 8, shingle-set offset
8, a flag), plus one bucket partition (about 16 x bands x documents / partitions bytes), one
pair partition, or one survivor partition at a time. Signatures are never all in memory.

**Apply** (per shard): a document in a cluster that is not its survivor gets ``keep=false``,
``reason="near_duplicate"``; every document gets ``cluster_id`` (the smallest document key of
its cluster; its own key when alone), ``cluster_size`` (1 when alone) and ``survivor_id``.
Documents without a signature (empty after normalisation, or a failed signature row) are kept
as singletons.

Survivor policies (``survivor``): ``first`` (default: earliest in lake order, as exact_dedup),
``min_id`` (smallest document id: independent of lake order), ``quality`` (highest
``score_column``, nulls last), ``source_priority`` (first source in ``source_priority``; sources
not listed come after), ``newest`` (latest ``crawl_date``, nulls last). Ties go to ``first``.

**In partitions** (``fit_map``/``fit_reduce``/``fit_finish``: engines/partitioned_fit.py; the Ray
executor's fit): a map per shard scans its batches as step 1 does (band rows, metadata; no
shingle sets), a reduce per group of bucket partitions does step 2's sorting and pairing, and the
finish (where the artifact is) writes the metadata and the band index, gets the shingle sets of
the documents in a candidate pair from a second pass over their shards (``fit_reread``), and runs
steps 3-5 with the same code: the same files and metrics as ``fit`` for any number of partitions.

**In two passes** (``fit_two_pass``: engines/reread_fit.py; what the local executor runs): the
scan of step 1 reads no text and makes no shingle sets; after step 2, ``fit_reread`` makes the
sets of the documents in a candidate pair from a second pass that reads the text column alone
(about half the documents of a crawl with a quarter near duplicates): the same files and metrics
as ``fit``, for ~15% less CPU in the fit (docs/dedup.md, session 6).

**Threads** (``fit_threads``: the executor's grant, ``threads`` when smaller): the scan reads the
next batch while it scans one; the bucket partitions of step 2 and the pair partitions of step 3
are worked on that many at a time; the second pass rereads that many shards at once. Results are
taken in partition / shard order (``engines.partitioned_fit.in_order``), so the files are the
one-thread fit's byte for byte; memory grows by one batch, one partition and one shard's reread
(its batches and shingle sets) per extra thread.

The document key is FNV-1a 64 (+ fmix64) of ``id, source, ingest_run, src_file, src_offset``
joined by U+001F: unique per raw row and stable across runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from engines.partitioned_fit import Sides, in_order, read_ahead
from engines.stage import EarlierRows, GlobalStage, StageContext, register_stage
from filters.minhash.signatures import BANDS_COLUMN, COUNT_COLUMN, MinHashParams, SignatureComputer, string_buffers

if TYPE_CHECKING:
    from filters.minhash.incremental import Previous

KEY_COLUMNS = ("id", "source", "ingest_run", "src_file", "src_offset")
FLUSH_ROWS = 1 << 18  # buffered (key, pos) rows before the partitions are written (4 MB)
# What a fit keeps besides buckets/ and assignment.parquet, so the next night can extend it.
DOCS_FILE = "docs.parquet"  # pos, key, id, source, crawl_date, score of every document
ROOTS_FILE = "roots.parquet"  # pos, root of every document in a cluster of two or more
STATE_FILE = "state.json"  # documents, bands


def _check_size(documents: int) -> None:
    if documents >= 1 << 32:
        raise ValueError("minhash_dedup codes candidate pairs in 64 bits: at most 2^32 documents per fit")


class MinHashDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """A verified candidate pair is a near duplicate at this Jaccard or more; all but the survivor of
    a cluster are dropped (``near_duplicate``)."""
    verify: bool = True
    """Check each candidate pair's exact Jaccard on the text (false: every LSH candidate pair counts)."""
    # Verification re-derives shingle sets from the text: use the same ngram / fold_digits as
    # minhash_signatures. Documents with more distinct shingles keep a bottom-k sample this big.
    ngram: int = Field(5, ge=1, le=64)
    """Word n-gram length of the verification shingles (as ``minhash_signatures``)."""
    fold_digits: bool = False
    """Read every digit as 0 when verifying (as ``minhash_signatures``)."""
    max_shingles: int = Field(4096, ge=16)
    """Larger shingle sets are verified on a bottom-k sample of this size."""
    threads: int = Field(0, ge=0, le=256)
    """Kernel threads (0: all cores in the main process), and at most this many for the fit's own
    steps (the executor's grant when 0); does not change the output."""
    survivor: Literal["first", "min_id", "quality", "source_priority", "newest"] = "first"
    """Which member of a cluster stays: ``first`` in lake order (the earliest ingested), ``min_id``,
    highest ``quality``, ``source_priority``, ``newest`` crawl date."""
    score_column: str = "score"
    """The score column fed in for ``survivor: quality``."""
    source_priority: list[str] = []
    """Sources in order of preference for ``survivor: source_priority``."""
    partitions: int = Field(64, ge=1, le=4096)
    """Spill partitions of the fit (memory per partition ~ 16 x bands x documents / partitions bytes)."""
    window: int = Field(8, ge=1, le=1024)
    """Candidate pairs per bucket member: the bucket's first member and this many before it."""
    largest_clusters: int = Field(20, ge=0)
    """Clusters listed in the fit's metrics and ``largest_clusters.parquet``."""


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


def _mix(x: np.ndarray) -> np.ndarray:
    """Spread values that are not uniform (pair codes, cluster roots) over the 64-bit range, so
    their top bits choose partitions evenly (Fibonacci hashing)."""
    return x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def part_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each 64-bit key from its top 32 bits (multiply-shift range reduction: monotone
    in the key, so partitions hold consecutive key ranges)."""
    return (((keys >> np.uint64(32)) * np.uint64(partitions)) >> np.uint64(32)).astype(np.int64)


class _SpillBuffer:
    """What both spills share: rows routed to ``partitions`` by a 64-bit key per row (``part_of``),
    buffered until ``flush_rows`` rows, then handed to the subclass's ``_write`` sorted by
    partition (stable, so rows keep their arrival order inside a partition)."""

    def __init__(self, folder: str, partitions: int, flush_rows: int = FLUSH_ROWS):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.partitions, self.flush_rows = folder, partitions, flush_rows
        self.buf: list[tuple[np.ndarray, Any]] = []
        self.rows = 0
        self.files: dict[int, list[str]] = {}

    def add(self, route: np.ndarray, rows: Any) -> None:
        """Buffer ``rows`` (one per entry of ``route``); row i goes to the partition of ``route[i]``."""
        if len(route):
            self.buf.append((part_of(route, self.partitions), rows))
            self.rows += len(route)
            if self.rows >= self.flush_rows:
                self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        part = np.concatenate([p for p, _ in self.buf])
        # A stable sort of 16-bit values is a radix sort in NumPy: ~7x faster than on int64.
        order = np.argsort(part.astype(np.uint16) if self.partitions <= 1 << 16 else part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.partitions + 1))
        payloads = [rows for _, rows in self.buf]
        self.buf, self.rows = [], 0
        self._write(payloads, order, bounds, np.flatnonzero(np.diff(bounds)).tolist())

    def _write(self, payloads: list[Any], order: np.ndarray, bounds: np.ndarray, parts: list[int]) -> None:
        raise NotImplementedError

    def close(self) -> dict[int, list[str]]:
        """Flush what is buffered; the files of each non-empty partition, in partition order."""
        self.flush()
        return dict(sorted(self.files.items()))


class _PartitionedSpill(_SpillBuffer):
    """Arrow tables spilled as one small Parquet file per partition and flush
    (``part-XXXX/NNNNN.parquet``). No writer stays open between flushes: an open Parquet writer
    holds about a megabyte of page and compressor buffers, so 64 of them cost more memory than
    the whole fit otherwise needs."""

    def __init__(self, folder: str, partitions: int, flush_rows: int = FLUSH_ROWS):
        super().__init__(folder, partitions, flush_rows)
        self.flushes = 0

    def _write(self, payloads: list[Any], order: np.ndarray, bounds: np.ndarray, parts: list[int]) -> None:
        table = pa.concat_tables(payloads).combine_chunks()
        for p in parts:
            folder = f"{self.folder}/part-{p:04d}"
            os.makedirs(folder, exist_ok=True)
            path = f"{folder}/{self.flushes:05d}.parquet"
            # No dictionary pages for the hash columns: random 64-bit keys never repeat, and
            # building a dictionary for them took half the write time.
            pq.write_table(table.take(order[bounds[p]:bounds[p + 1]]), path, compression="zstd",
                           compression_level=1, use_dictionary=self._dict_columns(table.schema))
            self.files.setdefault(p, []).append(path)
        self.flushes += 1

    @staticmethod
    def _dict_columns(schema: pa.Schema) -> list[str]:
        return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


# Rows of the numeric spills: band rows (bucket partitions) and candidate pairs.
BAND_ROW = np.dtype([("key", "<u8"), ("pos", "<i8")])
PAIR_ROW = np.dtype([("pair", "<i8")])


class _RawSpill(_SpillBuffer):
    """Fixed-width rows (``BAND_ROW``, ``PAIR_ROW``, given to ``add`` as one array per field): each
    flush appends every partition's rows, as raw bytes, to that partition's one file
    (``part-XXXX.bin``), opened only to append. A spill file is scratch (read back by ``read_rows``
    in the same fit and deleted), so it needs no format: writing ~700 small Parquet files per
    200,000 documents and reading them back cost ~1 CPU s of a fit."""

    def __init__(self, folder: str, partitions: int, dtype: np.dtype, flush_rows: int = FLUSH_ROWS):
        super().__init__(folder, partitions, flush_rows)
        self.dtype = dtype

    def _write(self, payloads: list[Any], order: np.ndarray, bounds: np.ndarray, parts: list[int]) -> None:
        rows = np.empty(len(order), dtype=self.dtype)
        for name in self.dtype.names or ():
            rows[name] = np.concatenate([c[name] for c in payloads])[order]
        for p in parts:
            path = f"{self.folder}/part-{p:04d}.bin"
            with open(path, "ab") as fh:
                rows[bounds[p]:bounds[p + 1]].tofile(fh)
            self.files.setdefault(p, [path])


def read_rows(files: list[str], dtype: np.dtype) -> pl.DataFrame:
    """The rows of ``_RawSpill`` files, one column per field."""
    rows = np.concatenate([np.fromfile(f, dtype=dtype) for f in files]) if files else np.zeros(0, dtype)
    return pl.DataFrame({name: np.ascontiguousarray(rows[name]) for name in dtype.names or ()})


def read_pairs(files: list[str]) -> np.ndarray:
    """The pair codes (``lo << 32 | hi``, uint64) of a candidate spill partition's files."""
    return np.concatenate([np.fromfile(f, dtype=PAIR_ROW)["pair"] for f in files]).view(np.uint64)


@dataclass
class _Scan:
    """What one pass over the batches left: spill files and per-document shingle offsets."""

    shingles_path: str
    first: int  # position of the first document of this pass
    docs: int = 0
    empty: int = 0
    bands: int | None = None
    bucket_parts: dict[int, list[str]] = field(default_factory=dict)
    offsets: list[np.ndarray] = field(default_factory=lambda: [np.zeros(1, dtype=np.int64)])
    full: list[np.ndarray] = field(default_factory=list)

    def shingle_sets(self) -> ShingleSets:
        full = np.concatenate(self.full) if self.full else np.zeros(0, dtype=bool)
        return ShingleSets(self.shingles_path, np.concatenate(self.offsets), full, self.first)

    def add(self, batch: _Batch, meta_writer: pq.ParquetWriter, shingle_file: BinaryIO | None) -> None:
        """Count one scanned batch in; its metadata and shingle sets go to the spill files."""
        if self.bands is None:
            self.bands = batch.bands
        self.empty += batch.empty
        meta_writer.write_table(batch.meta.cast(meta_writer.schema))
        if shingle_file is not None and batch.shingles is not None:
            values, lengths, full = batch.shingles
            shingle_file.write(memoryview(values))
            self.offsets.append(int(self.offsets[-1][-1]) + np.cumsum(lengths))
            self.full.append(full)
        self.docs += batch.meta.num_rows


@dataclass
class _Batch:
    """One batch scanned (``MinHashDedup._scan_batch``): its band rows (bucket partition, band key,
    position), document metadata, shingle sets (values, per-document lengths, whether each set is
    complete; ``None`` without ``verify``), rows without a signature, and bands per signature."""

    bucket_rows: pl.DataFrame | None
    meta: pa.Table
    shingles: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    empty: int
    bands: int | None

    def moved(self, shift: int) -> _Batch:
        """Without its band rows (what the finish of a partitioned fit needs), positions moved by ``shift``."""
        pos = pa.array(self.meta.column("pos").to_numpy() + shift, pa.int64())
        return _Batch(None, self.meta.set_column(0, "pos", pos), self.shingles, self.empty, self.bands)


@dataclass
class ShingleSets:
    """Shingle sets in a flat file: the set of local document i is ``offsets[i]:offsets[i+1]``
    (uint32 values). ``local`` maps document positions to local indices."""

    path: str
    offsets: np.ndarray
    full: np.ndarray
    first: int = 0
    earlier: np.ndarray | None = None  # sorted earlier positions stored before the new documents

    def local(self, pos: np.ndarray) -> np.ndarray:
        if self.earlier is None:
            return pos - self.first
        old = pos < self.first
        return np.where(old, np.searchsorted(self.earlier, pos), len(self.earlier) + pos - self.first)


def _bucket_pairs(k: Any, f: pl.DataFrame, window: int, new_from: int = 0) -> tuple[np.ndarray, int] | None:
    """The candidate pairs of one bucket partition's rows sorted by (key, pos), as unique pair codes
    (``lo << 32 | hi``), and its largest bucket; only pairs whose later member is at ``new_from`` or
    after. ``None`` when no key occurs twice."""
    keys = f.get_column("key").to_numpy()
    same = keys[1:] == keys[:-1]  # rows are sorted by key: a bucket is a run of equal keys
    dup = np.zeros(len(keys), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    if not dup.any():
        return None
    keys, pos = keys[dup], f.get_column("pos").to_numpy()[dup]
    lo, hi = k.bucket_pairs_kernel(keys, pos, window)
    if new_from:
        new = hi >= new_from
        lo, hi = lo[new], hi[new]
    code = np.unique((lo.astype(np.uint64) << np.uint64(32)) | hi.astype(np.uint64))
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return code, int(np.diff(np.r_[starts, len(keys)]).max())


class _CandidateSpill:
    """The band index files of the artifact (``buckets/part-XXXX.parquet``) as they are written,
    and the candidate pairs, spilled by pair code; with the counts the fit reports."""

    def __init__(self, folder: str, artifact_dir: str, partitions: int):
        self.spill = _RawSpill(folder, partitions, PAIR_ROW)
        self.buckets = f"{artifact_dir}/buckets"
        os.makedirs(self.buckets, exist_ok=True)
        self.stats = {"bucket_pairs": 0, "largest_bucket": 0, "partitions": 0}  # bucket_pairs: before de-duplication

    def write_bucket(self, part: int, rows: pl.DataFrame) -> None:
        """One bucket partition's rows, sorted by (key, pos)."""
        self.bucket_file(part, rows)
        self.stats["partitions"] += 1

    def bucket_file(self, part: int, rows: pl.DataFrame) -> None:
        """``write_bucket`` without the count: safe to call from several threads (one file each)."""
        rows.rechunk().write_parquet(f"{self.buckets}/part-{part:04d}.parquet", compression="zstd",
                                     compression_level=1)

    def add(self, code: np.ndarray, largest: int) -> None:
        """One bucket partition's unique pair codes and its largest bucket."""
        self.stats["bucket_pairs"] += len(code)
        self.stats["largest_bucket"] = max(self.stats["largest_bucket"], largest)
        self.spill.add(_mix(code), {"pair": code.view(np.int64)})

    def close(self) -> tuple[dict[int, list[str]], dict[str, int]]:
        return self.spill.close(), self.stats


def _write_roots(path: str, roots: np.ndarray) -> None:
    """The root of every document in a cluster of two or more (singletons are their own)."""
    sizes = np.bincount(roots, minlength=len(roots)) if len(roots) else np.zeros(0, np.int64)
    member = np.flatnonzero(sizes[roots] > 1) if len(roots) else np.zeros(0, np.int64)
    pq.write_table(pa.table({"pos": pa.array(member, pa.int64()), "root": pa.array(roots[member], pa.int64())}),
                   path, compression="zstd")


# Cluster members per partition in the survivor step (a partition is sorted and grouped in memory:
# ~100 bytes per member, in a few Polars frames at once).
MEMBERS_PER_PART = 1 << 16


@register_stage
class MinHashDedup(GlobalStage):
    kind = "minhash_dedup"
    version = "1"
    fit_policy = "incremental"  # with survivor: first (see __init__ and filters/minhash/incremental.py)
    # The flow feeds the band columns from minhash_signatures (and a score column when a scorer
    # writes one); the rest are document columns. The text is read by the fit only (verify).
    needs = ("id", "source", "ingest_run", "src_file", "src_offset", "crawl_date", "text",
             BANDS_COLUMN, COUNT_COLUMN, "score")
    Params = MinHashDedupParams
    runtime_params = ("threads",)

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
        if p.survivor != "first":
            # A new document can win a cluster under these policies (a better score, a newer
            # crawl, a smaller id), which would change an earlier document's verdict: refit.
            self.fit_policy = "full"  # type: ignore[misc]

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "cluster_id": pa.uint64(), "cluster_size": pa.int64(),
                "survivor_id": pa.string()}

    # --- fit --------------------------------------------------------------------------------
    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        return self._fit(batches, artifact_dir, None)

    def fit_incremental(self, previous_dir: str, batches: Iterator[pl.DataFrame], artifact_dir: str,
                        earlier: EarlierRows) -> dict[str, Any]:
        """Add new shards to the index of an earlier fit (``survivor: first`` only): see
        filters/minhash/incremental.py. Equal to a full fit for every new document."""
        from filters.minhash.incremental import Previous
        return self._fit(batches, artifact_dir, Previous(previous_dir, earlier))

    # --- the fit in band partitions (engines.partitioned_fit): the Ray executor runs one task per
    # shard (metadata, band rows, shingle sets), one per group of bucket partitions (the band index
    # and its candidate pairs), then verification, union-find and survivors where the artifact is.
    fit_key = "part"  # the bucket partition of a band row (part_of its key): a partition holds whole buckets

    def fit_map(self, batch: pl.DataFrame, row: int) -> tuple[pl.DataFrame, _Batch | None]:
        """One batch -> its band rows (bucket partition, key, position in the shard) and the rest of
        what the scan keeps of it (metadata; no shingle sets: ``fit_reread`` makes those of the
        documents in a candidate pair) for the finish."""
        if batch.height == 0:
            return pl.DataFrame(schema={"part": pl.Int64, "key": pl.UInt64, "pos": pl.Int64}), None
        scanned = self._scan_batch(batch, row, None)
        assert scanned.bucket_rows is not None
        return scanned.bucket_rows, scanned.moved(0)

    def fit_reread(self, batches: Iterator[pl.DataFrame], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shingle sets of one shard's rows ``rows`` (ascending positions in the shard), as the
        scan makes them: (values, length of each set, whether each set is complete)."""
        shingler = self._shingler()
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        values, lengths, full, first = [np.zeros(0, np.uint32)], [np.zeros(0, np.int64)], [np.zeros(0, bool)], 0
        for batch in batches:
            mine = rows[(rows >= first) & (rows < first + batch.height)] - first
            first += batch.height
            if len(mine):
                _, n_distinct, sv, soff = shingler.compute(batch.get_column("text").gather(mine), p.max_shingles,
                                                           band_keys=False)
                values.append(np.ascontiguousarray(sv, dtype=np.uint32))
                lengths.append(np.diff(soff))
                full.append(n_distinct <= p.max_shingles)
        return np.concatenate(values), np.concatenate(lengths), np.concatenate(full)

    def fit_reduce(self, frames: list[tuple[int, pl.DataFrame]]) -> list[tuple[int, pl.DataFrame, Any]]:
        """Some bucket partitions' rows from every shard -> per bucket partition (in order): its rows
        sorted by (key, position in the lake), for the band index, and its candidate pairs."""
        from filters.minhash import kernels as k
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        rows = pl.concat([f.with_columns(pl.col("pos") + start) for start, f in frames])
        out = []
        for (part,), f in sorted(rows.partition_by("part", as_dict=True).items()):
            f = f.select("key", "pos").sort("key", "pos")
            out.append((int(part), f, _bucket_pairs(k, f, p.window)))
        return out

    def fit_finish(self, parts: Iterator[list[tuple[int, pl.DataFrame, Any]]], sides: Sides, documents: int,
                   artifact_dir: str, prev: Previous | None = None) -> dict[str, Any]:
        """The artifact from the reduced bucket partitions and every shard's metadata (in lake
        order), with the shingle sets of the documents in a candidate pair made by a second pass
        over their shards: the files and metrics of ``fit`` over the same shards (with ``prev``:
        of ``fit_incremental`` on top of it, over the new shards that were mapped)."""
        from filters.minhash import kernels as k
        n_old = prev.documents if prev else 0
        _check_size(n_old + documents)
        timings: dict[str, float] = {}
        spill = f"{artifact_dir}/_spill"
        os.makedirs(spill, exist_ok=True)
        t0 = time.perf_counter()
        scan = _Scan(f"{spill}/shingles.u32", n_old)
        with self._scan_files(scan, f"{artifact_dir}/{DOCS_FILE}", prev) as add:
            for start, batches in sides:
                for side in batches:
                    if side is not None:
                        add(side.moved(n_old + start))
        timings["scan_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        pairs = _CandidateSpill(f"{spill}/pairs", artifact_dir, self.params.partitions)  # type: ignore[attr-defined]
        written = set()
        for part in parts:
            for bucket, rows, found in part:
                pairs.write_bucket(bucket, rows)
                written.add(bucket)
                if found is not None:
                    pairs.add(*found)
        for bucket, rows in prev.untouched_buckets(written) if prev else ():
            pairs.write_bucket(bucket, rows)
        pair_files, cand = pairs.close()
        shingles = (self._reread_shingles(sides.whole(), pair_files, n_old + documents, spill)
                    if self.params.verify else None)  # type: ignore[attr-defined]
        timings["candidates_s"] = time.perf_counter() - t1
        return self._cluster(k, scan, pair_files, cand, artifact_dir, prev, timings, shingles)

    def fit_reduce_incremental(self, previous: str, frames: list[tuple[int, pl.DataFrame]]
                               ) -> list[tuple[int, pl.DataFrame, Any]]:
        """``fit_reduce`` of a nightly update: merged into the earlier band index (filters/minhash/incremental.py)."""
        from filters.minhash.incremental import reduce_on_previous
        return reduce_on_previous(self, previous, frames)

    def fit_finish_incremental(self, previous_dir: str, parts: Iterator[list[tuple[int, pl.DataFrame, Any]]],
                               sides: Sides, documents: int, artifact_dir: str) -> dict[str, Any]:
        """``fit_finish`` on top of the earlier artifact: the files and metrics of ``fit_incremental``."""
        from filters.minhash.incremental import Previous
        prev = Previous(previous_dir, None)
        if self.params.verify and sum(sides.earlier_rows()) != prev.documents:  # type: ignore[attr-defined]
            raise ValueError(f"minhash_dedup: the earlier shards hold {sum(sides.earlier_rows())} rows, the "
                             f"earlier fit counted {prev.documents}: refit (curate run --refit NAME)")
        return self.fit_finish(parts, sides, documents, artifact_dir, prev)

    @staticmethod
    def _reread_shingles(sides: Sides, pair_files: dict[int, list[str]], documents: int, spill: str) -> ShingleSets:
        """The shingle sets of every document in a candidate pair, from a second pass over their
        shards (``fit_reread``), in one flat file in lake order."""
        wanted = [np.zeros(0, dtype=np.int64)]
        for files in pair_files.values():
            code = read_pairs(files)
            wanted.append(np.unique(np.concatenate([(code >> np.uint64(32)).astype(np.int64),
                                                    (code & np.uint64(0xFFFFFFFF)).astype(np.int64)])))
        docs = np.unique(np.concatenate(wanted))
        first = np.asarray(sides.first, dtype=np.int64)
        shard = np.searchsorted(first, docs, side="right") - 1
        bounds = np.searchsorted(shard, np.arange(len(first) + 1))
        requests = {i: docs[bounds[i]:bounds[i + 1]] - first[i] for i in range(len(first)) if bounds[i + 1] > bounds[i]}
        path, offsets, full = f"{spill}/shingles-pairs.u32", [np.zeros(1, dtype=np.int64)], []
        with open(path, "wb") as out:
            for _, (values, lengths, complete) in sides.reread(requests):
                out.write(memoryview(values))
                offsets.append(int(offsets[-1][-1]) + np.cumsum(lengths))
                full.append(complete)
        # Every position is "earlier" than ``documents``: ShingleSets.local finds it among ``docs``.
        return ShingleSets(path, np.concatenate(offsets), np.concatenate(full) if full else np.zeros(0, bool),
                           documents, docs)

    def fit_two_pass(self, batches: Iterator[pl.DataFrame], sides: Callable[[], Sides],
                     artifact_dir: str) -> dict[str, Any]:
        """``fit`` (same files and metrics) reading the text only of the documents in a candidate
        pair (engines/reread_fit.py): the scan reads no text and makes no shingle sets; after the
        candidate pairs, ``fit_reread`` makes the sets of those documents from a second pass. Costs
        one more decode of the text column, saves shingling every document outside a pair (the
        larger part of the fit's CPU on a corpus with few duplicates)."""
        from filters.minhash import kernels as k
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        if not p.verify:
            return self.fit(batches, artifact_dir)
        self.needs = tuple(c for c in self._fit_needs if c != "text")  # type: ignore[misc]  # read as each shard starts
        timings: dict[str, float] = {}
        spill = f"{artifact_dir}/_spill"
        os.makedirs(spill, exist_ok=True)
        t0 = time.perf_counter()
        try:
            scan = self._scan(batches, spill, f"{artifact_dir}/{DOCS_FILE}", None, shingles=False)
        finally:
            self.needs = self._fit_needs  # type: ignore[misc]
        _check_size(scan.docs)
        timings["scan_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        pair_files, cand = self._candidates(k, scan.bucket_parts, artifact_dir, spill, None)
        self.needs = ("id", "text")  # type: ignore[misc]  # the second pass reads the text alone
        try:
            shingles = self._reread_shingles(sides(), pair_files, scan.docs, spill)
        finally:
            self.needs = self._fit_needs  # type: ignore[misc]
        timings["candidates_s"] = time.perf_counter() - t1
        return self._cluster(k, scan, pair_files, cand, artifact_dir, None, timings, shingles)

    def _fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str, prev: Previous | None) -> dict[str, Any]:
        from filters.minhash import kernels as k
        self.needs = self._fit_needs  # type: ignore[misc]  # (the executor reads batches lazily, after this)
        timings: dict[str, float] = {}
        spill = f"{artifact_dir}/_spill"
        os.makedirs(spill, exist_ok=True)
        n_old = prev.documents if prev else 0
        t0 = time.perf_counter()
        scan = self._scan(batches, spill, f"{artifact_dir}/{DOCS_FILE}", prev)
        _check_size(n_old + scan.docs)
        timings["scan_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        pair_files, cand = self._candidates(k, scan.bucket_parts, artifact_dir, spill, prev)
        timings["candidates_s"] = time.perf_counter() - t1
        return self._cluster(k, scan, pair_files, cand, artifact_dir, prev, timings)

    def _cluster(self, k: Any, scan: _Scan, pair_files: dict[int, list[str]], cand: dict[str, int], artifact_dir: str,
                 prev: Previous | None, timings: dict[str, float], shingles: ShingleSets | None = None) -> dict[str, Any]:
        """From the scan's spills and the candidate pairs: verify, union, survivors; the rest of the
        artifact and the fit's metrics (a full fit and a partitioned one share it). ``shingles``:
        the sets to verify with, when not the scan's."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        spill = f"{artifact_dir}/_spill"
        n_docs = (prev.documents if prev else 0) + scan.docs
        # Verify and union.
        t2 = time.perf_counter()
        parent = prev.parent(n_docs) if prev else np.arange(n_docs, dtype=np.int64)
        if shingles is None:
            shingles = prev.shingle_sets(self, scan, pair_files, spill) if (prev and p.verify) else scan.shingle_sets()
        candidates = accepted = 0
        sims_hist = np.zeros(20, dtype=np.int64)
        fd = os.open(shingles.path, os.O_RDONLY) if p.verify else None
        sets = shingles

        def verified(files: list[str]) -> tuple[int, np.ndarray | None, np.ndarray, np.ndarray]:
            # Runs in the fit's threads (pread and the Jaccard kernel release the GIL): one pair
            # partition -> (its candidates, their similarities, the accepted pairs).
            code = np.unique(read_pairs(files))
            lo = (code >> np.uint64(32)).astype(np.int64)
            hi = (code & np.uint64(0xFFFFFFFF)).astype(np.int64)
            if not p.verify:
                return len(code), None, lo, hi
            sims = self._similarities(k, fd, sets.offsets, sets.full, sets.local(lo), sets.local(hi))
            ok = sims >= p.threshold
            return len(code), sims, lo[ok], hi[ok]

        # The union stays in this thread, in partition order (its roots do not depend on the
        # order anyway: the larger root always joins the smaller).
        for n_code, sims, lo, hi in in_order(verified, list(pair_files.values()), self.fit_threads()):
            candidates += n_code
            if sims is not None:
                sims_hist += np.histogram(sims, bins=20, range=(0.0, 1.0))[0]
            accepted += len(lo)
            k.union_kernel(parent, lo, hi)
        if fd is not None:
            os.close(fd)
        pa.default_memory_pool().release_unused()
        roots = k.roots_kernel(parent)
        timings["verify_union_s"] = time.perf_counter() - t2

        # Clusters and survivors.
        t3 = time.perf_counter()
        del parent
        extra = prev.changes(roots) if prev else {}
        summary = self._survivors(f"{artifact_dir}/{DOCS_FILE}", roots, spill, f"{artifact_dir}/assignment.parquet")
        _write_roots(f"{artifact_dir}/{ROOTS_FILE}", roots)
        del roots
        largest = summary["largest"]
        largest.write_parquet(f"{artifact_dir}/largest_clusters.parquet")
        timings["clusters_s"] = time.perf_counter() - t3
        import shutil
        shutil.rmtree(spill, ignore_errors=True)
        (Path(artifact_dir) / STATE_FILE).write_text(json.dumps({
            "documents": n_docs, "bands": scan.bands or (prev.bands if prev else None),
            "without_signature": scan.empty + (prev.empty if prev else 0)}))
        return {
            "documents": n_docs, "new_documents": scan.docs, "without_signature": scan.empty + (prev.empty if prev else 0),
            "bands": scan.bands or (prev.bands if prev else None), "bucket_partitions": cand["partitions"],
            "largest_bucket": cand["largest_bucket"], "bucket_pairs": cand["bucket_pairs"],
            "candidate_pairs": candidates, "accepted_pairs": accepted,
            "rejected_pairs": candidates - accepted if p.verify else 0, "verify": p.verify, "threshold": p.threshold,
            "candidate_similarity_histogram": sims_hist.tolist() if p.verify else None,
            "clusters": summary["clusters"], "clustered_documents": summary["clustered"],
            "duplicates": summary["clustered"] - summary["clusters"],
            "duplicates_by_source": dict(sorted(summary["duplicates_by_source"].items())),
            "largest_clusters": [{k2: (str(v) if k2 == "cluster_id" else v) for k2, v in r.items()}
                                 for r in largest.to_dicts()],
            **extra,
            "seconds": {k2: round(v, 3) for k2, v in timings.items()},
        }

    def _scan(self, batches: Iterator[pl.DataFrame], spill: str, docs_path: str, prev: Previous | None,
              shingles: bool = True) -> _Scan:
        """One pass over the (new) batches: band keys to a partitioned spill, document metadata to
        ``docs_path`` (after the earlier documents' when ``prev``), shingle sets (``verify`` and
        ``shingles``) to a flat spill file. Documents are numbered from ``prev.documents`` (0 for a
        full fit)."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        buckets = _RawSpill(f"{spill}/buckets", p.partitions, BAND_ROW)
        scan = _Scan(f"{spill}/shingles.u32", prev.documents if prev else 0)
        shingler = self._shingler() if (p.verify and shingles) else None
        with self._scan_files(scan, docs_path, prev, shingler is not None) as add:
            # The next batch is read (Parquet decode, fed columns) while this one is scanned.
            for batch in read_ahead(batches, self.fit_threads()):
                if batch.height:
                    scanned = self._scan_batch(batch, scan.first + scan.docs, shingler)
                    assert scanned.bucket_rows is not None
                    bkeys = scanned.bucket_rows.get_column("key").to_numpy()
                    buckets.add(bkeys, {"key": bkeys, "pos": scanned.bucket_rows.get_column("pos").to_numpy()})
                    add(scanned)
        scan.bucket_parts = buckets.close()
        pa.default_memory_pool().release_unused()
        return scan

    def _shingler(self) -> SignatureComputer:
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        return SignatureComputer(MinHashParams(ngram=p.ngram, fold_digits=p.fold_digits, threads=p.threads),
                                 self.context.threads)

    @contextlib.contextmanager
    def _scan_files(self, scan: _Scan, docs_path: str, prev: Previous | None,
                    shingles: bool = True) -> Iterator[Callable[[_Batch], None]]:
        """The spill files of a scan (document metadata, after the earlier documents' when ``prev``;
        shingle sets with ``verify`` and ``shingles``), open while the scanned batches are added in
        lake order."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        meta_writer: pq.ParquetWriter | None = prev.copy_docs(docs_path) if prev else None
        shingle_file = open(scan.shingles_path, "wb") if (p.verify and shingles) else None

        def add(batch: _Batch) -> None:
            nonlocal meta_writer
            if meta_writer is None:
                meta_writer = pq.ParquetWriter(docs_path, batch.meta.schema, compression="zstd", compression_level=1)
            scan.add(batch, meta_writer, shingle_file)
        try:
            yield add
        finally:
            if shingle_file is not None:
                shingle_file.close()
            if meta_writer is not None:
                meta_writer.close()

    def _scan_batch(self, batch: pl.DataFrame, first: int, shingler: SignatureComputer | None) -> _Batch:
        """One non-empty batch, its documents numbered from ``first``: band rows, metadata, shingle
        sets (with a ``shingler``)."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        n = batch.height
        missing = [c for c in self.needs if c not in batch.columns]
        if missing:
            raise ValueError(f"minhash_dedup: columns {missing} are missing; run minhash_signatures before it"
                             + (f", and a stage writing {p.score_column!r}" if p.score_column in missing else ""))
        pos = np.arange(first, first + n, dtype=np.int64)
        values, lengths = _list_parts(batch.get_column(BANDS_COLUMN), np.uint64)
        counts = batch.get_column(COUNT_COLUMN).fill_null(0).to_numpy().astype(np.int64)
        good = (lengths > 0) & (counts > 0)
        row_of_value = np.repeat(np.arange(n), lengths)
        keep_values = good[row_of_value]
        bkeys = values[keep_values]
        bucket_rows = pl.DataFrame({"part": part_of(bkeys, p.partitions), "key": bkeys,
                                    "pos": pos[row_of_value[keep_values]]})
        meta = batch.select(
            pl.Series("pos", pos), pl.Series("key", document_keys(batch)), pl.col("id"), pl.col("source"),
            pl.col("crawl_date"),
            (pl.col(p.score_column).cast(pl.Float64) if p.survivor == "quality"
             else pl.lit(None, pl.Float64)).alias("score")).to_arrow()
        shingles = None
        if shingler is not None:
            # Bottom-k shingle sets for verification, derived from the text (all of a document's
            # shingles up to max_shingles distinct ones); none for documents without a signature.
            _, n_distinct, sv, soff = shingler.compute(batch.get_column("text"), p.max_shingles, band_keys=False)
            sl = np.diff(soff)
            if not good.all():
                sv = sv[np.repeat(good, sl)]
                sl = np.where(good, sl, 0)
            shingles = (np.ascontiguousarray(sv, dtype=np.uint32), sl, n_distinct <= p.max_shingles)
        bands = int(lengths[lengths > 0][0]) if (lengths > 0).any() else None
        return _Batch(bucket_rows, meta, shingles, int(n - good.sum()), bands)

    def _candidates(self, k: Any, bucket_parts: dict[int, list[str]], artifact_dir: str, spill: str,
                    prev: Previous | None) -> tuple[dict[int, list[str]], dict[str, int]]:
        """Candidate pairs, per bucket partition, spilled and partitioned again by pair code.
        Each partition's rows (the earlier index's partition first, when ``prev``) become one
        file sorted by (key, pos): the band index kept in the artifact. With ``prev`` only pairs
        with a new document are made, and only in buckets a new document is in: exactly the
        pairs of a full fit that the earlier fit did not already have."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        pairs = _CandidateSpill(f"{spill}/pairs", artifact_dir, p.partitions)
        old_parts = prev.bucket_parts() if prev else {}

        def one(part: int) -> tuple[np.ndarray, int] | None:
            # Runs in the fit's threads: reads, sorts and writes only this partition's files.
            new_files = bucket_parts.get(part, [])
            f = read_rows(new_files, BAND_ROW)
            if part in old_parts:
                f = pl.concat([pl.read_parquet(old_parts[part]), f])
            f = f.sort("key", "pos")
            pairs.bucket_file(part, f)
            for path in new_files:
                os.remove(path)
            if prev and new_files:
                f = f.join(f.filter(pl.col("pos") >= prev.documents).select("key").unique(), on="key", how="semi",
                           maintain_order="left")
            elif prev:
                return None
            return _bucket_pairs(k, f, p.window, prev.documents if prev else 0)

        # fit_threads() partitions at a time; the spill gets their pairs in partition order, so
        # its files are the serial loop's byte for byte.
        for found in in_order(one, sorted(set(bucket_parts) | set(old_parts)), self.fit_threads()):
            pairs.stats["partitions"] += 1
            if found is not None:
                pairs.add(*found)
        return pairs.close()

    def fit_threads(self) -> int:
        """Threads of the fit's own steps (the scan's read-ahead, per-partition work, shards
        reread at once): the executor's grant (``context.threads``), or ``threads`` when smaller."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        grant = max(1, self.context.threads)
        return min(p.threads, grant) if p.threads else grant

    @staticmethod
    def _similarities(k: Any, fd: int | None, offsets: np.ndarray, full: np.ndarray,
                      lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Jaccard of each candidate pair from the spilled shingle sets, reading (pread) only the
        sets of this partition's documents: no mapping, so memory is this partition's sets."""
        if fd is None or not len(lo):
            return np.zeros(len(lo))
        docs, inv = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        values, local_off = k.read_u32_ranges(fd, offsets[docs], offsets[docs + 1])  # one read per document
        return k.jaccard_kernel(values, local_off, full[docs], inv[:len(lo)], inv[len(lo):])

    def _survivors(self, docs_path: str, roots: np.ndarray, spill: str, out_path: str) -> dict[str, Any]:
        """Survivor of every cluster, written as ``out_path`` (one row per document in a cluster
        of two or more, sorted by document key), in bounded memory: one pass over the metadata
        spill sends each cluster member to a partition chosen by its cluster root
        (``MEMBERS_PER_PART`` members each), every partition is ranked by the policy on its own,
        and the rows go through key-range partitions so that writing them in partition order
        gives a file sorted by key. Returns counts, duplicates per source and the largest
        clusters."""
        p: MinHashDedupParams = self.params  # type: ignore[assignment]
        cols = ["pos", "key", "id", "source"]
        if p.survivor == "first":
            order, desc = ["pos"], [False]
        elif p.survivor == "min_id":
            order, desc = ["id", "pos"], [False, False]
        elif p.survivor == "quality":
            order, desc, cols = ["score", "pos"], [True, False], cols + ["score"]
        elif p.survivor == "newest":
            order, desc, cols = ["crawl_date", "pos"], [True, False], cols + ["crawl_date"]
        else:
            order, desc = ["_rank", "pos"], [False, False]
        sizes = np.bincount(roots, minlength=len(roots)) if len(roots) else np.zeros(0, np.int64)
        member = sizes[roots] > 1 if len(roots) else np.zeros(0, bool)
        del sizes
        parts = max(1, -(-int(member.sum()) // MEMBERS_PER_PART))
        by_root = _PartitionedSpill(f"{spill}/members", parts, MEMBERS_PER_PART)
        if member.any():
            for rb in pq.ParquetFile(docs_path).iter_batches(batch_size=1 << 16, columns=cols):
                pos = rb.column("pos").to_numpy()
                sel = member[pos]
                if sel.any():
                    r = roots[pos[sel]]
                    table = pa.Table.from_batches([rb]).filter(pa.array(sel)).append_column("root", pa.array(r))
                    by_root.add(_mix(r), table)
        del member
        by_key = _PartitionedSpill(f"{spill}/assignment", parts, MEMBERS_PER_PART)
        n_clusters = clustered = 0
        dups: dict[str, int] = {}
        tops: list[pl.DataFrame] = []
        rank = {s: i for i, s in enumerate(p.source_priority)}
        for files in by_root.close().values():
            info = pl.read_parquet(files)
            if p.survivor == "source_priority":
                info = info.with_columns(pl.col("source").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
                                         .alias("_rank"))
            ranked = info.sort(["root", *order], descending=[False, *desc], nulls_last=True)
            del info
            clusters = ranked.group_by("root", maintain_order=True).agg(
                pl.col("key").min().alias("cluster_id"), pl.len().cast(pl.Int64).alias("cluster_size"),
                pl.col("key").first().alias("survivor_key"), pl.col("id").first().alias("survivor_id"),
                pl.col("source").first().alias("survivor_source"))
            rows = ranked.select("key", "source", "root").join(
                clusters.select("root", "cluster_id", "cluster_size", "survivor_id", "survivor_key"), on="root",
                how="left", maintain_order="left").select(
                "key", "source", "cluster_id", "cluster_size", "survivor_id",
                (pl.col("key") == pl.col("survivor_key")).alias("is_survivor"))
            n_clusters += clusters.height
            clustered += rows.height
            for src, n in rows.filter(~pl.col("is_survivor")).group_by("source").len().iter_rows():
                dups[src] = dups.get(src, 0) + n
            by_key.add(rows.get_column("key").to_numpy(), rows.to_arrow())
            if p.largest_clusters:
                top = clusters.sort(["cluster_size", "cluster_id"], descending=[True, False]).head(p.largest_clusters)
                sources = (ranked.join(top.select("root"), on="root").group_by("root")
                           .agg(pl.col("source").unique().sort().alias("sources")))
                tops.append(top.join(sources, on="root", how="left", maintain_order="left").select(
                    "cluster_id", "cluster_size", "survivor_id", "survivor_source", "sources"))
        schema = pa.schema([("key", pa.uint64()), ("source", pa.string()), ("cluster_id", pa.uint64()),
                            ("cluster_size", pa.int64()), ("survivor_id", pa.string()), ("is_survivor", pa.bool_())])
        with pq.ParquetWriter(out_path, schema, compression="zstd") as writer:
            # Key-range partitions in order: the file comes out sorted by key.
            for files in by_key.close().values():
                writer.write_table(pl.read_parquet(files).sort("key").to_arrow().cast(schema))
        largest = (pl.concat(tops).sort(["cluster_size", "cluster_id"], descending=[True, False])
                   .head(p.largest_clusters) if tops else
                   pl.DataFrame(schema={"cluster_id": pl.UInt64, "cluster_size": pl.Int64, "survivor_id": pl.String,
                                        "survivor_source": pl.String, "sources": pl.List(pl.String)}))
        return {"clusters": n_clusters, "clustered": clustered, "duplicates_by_source": dups, "largest": largest}

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
