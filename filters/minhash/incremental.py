"""Adding a night's shards to an earlier ``minhash_dedup`` fit (``survivor: first``).

What an earlier fit leaves in its artifact (besides ``assignment.parquet`` for the apply):
``buckets/part-XXXX.parquet`` (band key, position; sorted), ``docs.parquet`` (position, document
key, id, source, crawl date, score), ``roots.parquet`` (the cluster root of every document in a
cluster of two or more) and ``state.json`` (documents, bands).

The update, for N earlier and n new documents (new positions N..N+n-1, after every earlier one in
lake order):

1. the new documents are scanned as in a full fit (band keys, metadata, shingle sets);
2. each bucket partition is merged with the earlier one; pairs are made only in buckets holding a
   new document, and only pairs with a new member are kept. Members of a bucket are sorted by
   position and earlier ones come first, so these are exactly the pairs a full fit would make
   that the earlier fit did not (the pairing only looks back);
3. to verify a pair with an earlier member, that member's text is read back (only those rows,
   ``EarlierRows``) and its shingle set derived again: the same definition as in the fit;
4. union-find starts from the earlier roots (a valid forest of the earlier components) and adds
   the accepted pairs, so the components equal a full fit's; the root stays the smallest
   position of each component, i.e. the survivor under ``first``;
5. survivors and ``assignment.parquet`` are rebuilt over all clustered documents.

**In band partitions** (engines/partitioned_fit.py; the Ray executor's nightly update): the same
steps split as the full fit's are. A map per new shard scans it (band rows, metadata); a reduce
per group of bucket partitions (``reduce_on_previous``) reads those partitions of the earlier band
index through the storage layer, merges the new rows in and makes step 2's pairs; the finish
(where the artifact is) copies the earlier metadata, writes the merged band index (and the
earlier partitions no new row reached, unchanged), gets the shingle sets of the documents in a
candidate pair, earlier and new alike, from a second pass over their shards, and runs steps
3-5 with the same code: the files and metrics of the one-process update for any partition count.

So every new document gets what a full fit over all shards in lake order gives it: dropped iff an
earlier document of its cluster exists, naming the cluster's first document. Earlier documents
keep the annotations they were given. The one case where a full fit would differ for them: a new
document that joins two clusters that were separate (or a kept document to an earlier cluster)
makes the later one's survivor a duplicate in a full fit; here it stays kept (its verdict was
published). The fit counts these in ``earlier_survivors_bridged`` (with examples); ``curate run
--refit NAME`` refits everything when a full fit's view is wanted.

Cost per night: the new documents' scan, one sequential merge pass over the bucket index
(~155 bytes per document on disk), a copy of the document metadata (~60 bytes per document),
reading back the earlier documents that are in a candidate pair with a new one, and the survivor
pass over the clustered documents. Memory: the per-document arrays of a full fit (16 bytes per
document: parent and roots) plus one partition at a time.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from engines import storage
from engines.stage import EarlierRows
from filters.minhash.signatures import MinHashParams, SignatureComputer

if TYPE_CHECKING:
    from filters.minhash.dedup import MinHashDedup, ShingleSets, _Scan

READ_BACK_ROWS = 4096  # earlier documents read back (and shingled) at a time


class Previous:
    """The artifact of the earlier fit, and a way to read its documents back."""

    def __init__(self, folder: str, earlier: EarlierRows | None):
        from filters.minhash.dedup import STATE_FILE
        self.folder = folder
        self.earlier = earlier
        with open(f"{folder}/{STATE_FILE}") as f:
            state = json.load(f)
        self.documents: int = int(state["documents"])
        self.bands: int | None = state.get("bands")
        self.empty: int = int(state.get("without_signature", 0))

    def copy_docs(self, docs_path: str) -> pq.ParquetWriter | None:
        """A writer for ``docs_path`` that already holds the earlier documents' metadata."""
        from filters.minhash.dedup import DOCS_FILE
        src = f"{self.folder}/{DOCS_FILE}"
        if not os.path.exists(src):
            return None
        pf = pq.ParquetFile(src)
        writer = pq.ParquetWriter(docs_path, pf.schema_arrow, compression="zstd", compression_level=1)
        for rb in pf.iter_batches(batch_size=1 << 16):
            writer.write_batch(rb)
        return writer

    def bucket_parts(self) -> dict[int, str]:
        folder = f"{self.folder}/buckets"
        if not os.path.isdir(folder):
            return {}
        return {int(name[5:9]): f"{folder}/{name}" for name in sorted(os.listdir(folder)) if name.startswith("part-")}

    def untouched_buckets(self, written: set[int]) -> Iterator[tuple[int, pl.DataFrame]]:
        """The earlier bucket partitions not in ``written`` (no new row reached them), as the
        one-process update writes them again: read and sorted by (key, pos)."""
        for part, path in self.bucket_parts().items():
            if part not in written:
                yield part, pl.read_parquet(path).sort("key", "pos")

    def _old_roots(self) -> pl.DataFrame:
        from filters.minhash.dedup import ROOTS_FILE
        return pl.read_parquet(f"{self.folder}/{ROOTS_FILE}")

    def parent(self, n_docs: int) -> np.ndarray:
        """Union-find parents for all documents: earlier ones under their earlier roots."""
        parent = np.arange(n_docs, dtype=np.int64)
        roots = self._old_roots()
        parent[roots.get_column("pos").to_numpy()] = roots.get_column("root").to_numpy()
        return parent

    def shingle_sets(self, stage: MinHashDedup, scan: _Scan, pair_files: dict[int, list[str]],
                     spill: str) -> ShingleSets:
        """One flat file with the shingle sets of the earlier documents in a candidate pair (read
        back and shingled again), then the new documents' sets from the scan."""
        from filters.minhash.dedup import ShingleSets, read_pairs
        assert self.earlier is not None, "reading earlier documents back needs the earlier shards"
        p = stage.params
        wanted = [np.zeros(0, dtype=np.int64)]
        for files in pair_files.values():
            code = read_pairs(files)
            lo = (code >> np.uint64(32)).astype(np.int64)
            wanted.append(np.unique(lo[lo < self.documents]))
        earlier = np.unique(np.concatenate(wanted))
        shingler = SignatureComputer(MinHashParams(ngram=p.ngram, fold_digits=p.fold_digits,  # type: ignore[attr-defined]
                                                   threads=p.threads))  # type: ignore[attr-defined]
        path = f"{spill}/shingles-all.u32"
        offsets = [np.zeros(1, dtype=np.int64)]
        full = []
        total = 0
        with open(path, "wb") as out:
            for i in range(0, len(earlier), READ_BACK_ROWS):
                chunk = earlier[i:i + READ_BACK_ROWS]
                texts = self.earlier.rows(chunk, ["text"]).get_column("text")
                _, n_distinct, sv, soff = shingler.compute(texts, p.max_shingles, band_keys=False)  # type: ignore[attr-defined]
                out.write(np.ascontiguousarray(sv, dtype=np.uint32).tobytes())
                offsets.append(total + soff[1:])
                total += int(soff[-1])
                full.append(n_distinct <= p.max_shingles)  # type: ignore[attr-defined]
            new = scan.shingle_sets()
            with open(new.path, "rb") as f:
                shutil.copyfileobj(f, out)
        os.remove(new.path)
        offsets.append(total + new.offsets[1:])
        return ShingleSets(path, np.concatenate(offsets), np.concatenate([*full, new.full]), self.documents, earlier)

    def changes(self, roots: np.ndarray) -> dict[str, Any]:
        """Earlier documents that were kept (first of their cluster, or alone) and that a full fit
        would now drop: a new document joined their cluster to an earlier document's."""
        from filters.minhash.dedup import DOCS_FILE
        old = self._old_roots()
        old_root = np.arange(self.documents, dtype=np.int64)
        old_root[old.get_column("pos").to_numpy()] = old.get_column("root").to_numpy()
        was_kept = old_root == np.arange(self.documents)
        bridged = np.flatnonzero(was_kept & (roots[:self.documents] != np.arange(self.documents)))
        examples: list[dict[str, Any]] = []
        if len(bridged):
            docs = pl.scan_parquet(f"{self.folder}/{DOCS_FILE}").filter(pl.col("pos").is_in(bridged[:10].tolist()))
            examples = docs.select("id", "source", "pos").collect().to_dicts()
            for ex in examples:
                ex["now_under_position"] = int(roots[ex.pop("pos")])
        return {"earlier_survivors_bridged": int(len(bridged)), "earlier_survivors_bridged_examples": examples}


def reduce_on_previous(stage: MinHashDedup, previous: str, frames: list[tuple[int, pl.DataFrame]]
                       ) -> list[tuple[int, pl.DataFrame, Any]]:
    """A nightly update's reduce (``fit_reduce_incremental``): some bucket partitions' new rows
    (positions in the new shards) -> per bucket partition, in order: the earlier band index's
    partition with the new rows merged in, sorted by (key, position in the lake), and the pairs
    with a new member in its buckets that hold one (step 2 above). ``previous``: the earlier
    artifact as a lake URL or a local folder; only these partitions' files are read."""
    from filters.minhash import kernels as k
    from filters.minhash.dedup import STATE_FILE, _bucket_pairs
    fs, root = storage.fs_and_path(previous)
    documents = int(json.loads(storage.read_bytes(f"{previous}/{STATE_FILE}"))["documents"])
    rows = pl.concat([f.with_columns(pl.col("pos") + (start + documents)) for start, f in frames])
    out = []
    for (part,), new in sorted(rows.partition_by("part", as_dict=True).items()):
        merged = [new.select("key", "pos")]
        try:
            with fs.open(f"{root}/buckets/part-{int(part):04d}.parquet", "rb") as fh:
                merged.insert(0, pl.read_parquet(fh))
        except FileNotFoundError:  # no earlier band row in this partition
            pass
        f = pl.concat(merged).sort("key", "pos")
        fresh = f.join(f.filter(pl.col("pos") >= documents).select("key").unique(), on="key", how="semi",
                       maintain_order="left")
        out.append((int(part), f, _bucket_pairs(k, fresh, stage.params.window, documents)))  # type: ignore[attr-defined]
    return out
