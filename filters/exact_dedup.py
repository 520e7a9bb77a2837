"""``exact_dedup``: flag exact duplicates (after normalisation) across all sources.

A global stage with ``fit_policy = "incremental"``. **Fit** streams the corpus oldest ingest first
(then sources in pipeline order, shard, row: ``Lake.shards_by_age``) and hashes each normalised
text; the artifact is an index of every distinct hash with its first occurrence, which is the
survivor (a documented, deterministic rule: the earliest ingested document, so a nightly run
drops new copies of what earlier releases already contain, never the released document), and
its group size. **Apply** marks every other member of the group ``keep=false`` with reason
``exact_duplicate`` and names the survivor.

Night after night (``fit_incremental``): the new shards' hashes are merged into the earlier
index; a new document whose hash is already there is a duplicate of the earlier survivor. Earlier
documents are not annotated again, so their verdicts never change; ``keep``, ``reason`` and
``survivor_id`` of every document equal what a full fit over all shards in lake order gives
(tested against one and against a plain dictionary), while ``dup_group_size`` of an earlier
document is its group's size on the night it was annotated (the index has the current size).

Normalisation (default): Unicode NFKC is not applied; text is lower-cased, runs of whitespace
collapse to one space, and leading/trailing whitespace is stripped, so copies that differ only in
case or spacing are duplicates. Set ``normalise: false`` for byte-exact matching.

Hash: the first 8 bytes of BLAKE2b over the UTF-8 normalised text (collision odds about n^2/2^65:
about 3e-6 for ten million documents); stable across versions, so the index stays valid. Cost: one
hash per document (C speed plus ~1 µs of Python per row); the fit keeps the index (hash, id and
position of every distinct document: about 100 bytes each in memory, 1 GB per ten million) and
stores it zstd-compressed (about 60 bytes per distinct document); apply loads only the hashes
seen more than once.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from engines.partitioned_fit import Sides
from engines.stage import EarlierRows, GlobalStage, StageContext, register_stage
from filters.whitespace import collapse_whitespace

INDEX_FILE = "index.parquet"
INDEX_SCHEMA = {"h": pl.Int64, "id": pl.String, "source": pl.String, "src_file": pl.String, "src_offset": pl.Int64,
                "size": pl.Int64}


class ExactDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    normalise: bool = True
    """Compare lower-cased text with whitespace collapsed; copies after the first in lake order are
    dropped (``exact_duplicate``). ``false``: byte-exact."""


def _normalised(text: pl.Expr, normalise: bool) -> pl.Expr:
    if not normalise:
        return text
    return collapse_whitespace(text.str.to_lowercase()).str.strip_chars()


def _hashes(texts: pl.Series) -> pl.Series:
    return pl.Series("h", [int.from_bytes(hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=8).digest(), "little",
                                          signed=True) for t in texts.to_list()], dtype=pl.Int64)


def _first_by_hash(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows in lake order -> one row per hash: its first document and the group's size."""
    return (rows.group_by("h", maintain_order=True)
            .agg(pl.col("id").first(), pl.col("source").first(), pl.col("src_file").first(),
                 pl.col("src_offset").first(), pl.len().cast(pl.Int64).alias("size"))
            .select(list(INDEX_SCHEMA)))


def _write_index(index: pl.DataFrame, earlier: int, docs: int, artifact_dir: str) -> dict[str, Any]:
    """Write the index (sorted by hash) and its duplicate groups; the fit's metrics (``earlier``:
    distinct hashes of the previous index, ``docs``: documents added). One chunk: the same rows
    give the same bytes whichever way (one process, partitions) they were put together."""
    index = index.rechunk()
    pq.write_table(index.to_arrow(), f"{artifact_dir}/{INDEX_FILE}", compression="zstd")
    groups = index.filter(pl.col("size") > 1)
    pq.write_table(groups.to_arrow(), f"{artifact_dir}/duplicate_groups.parquet")
    total = int(index.get_column("size").sum() or 0)
    return {"documents": total, "new_documents": docs, "groups": groups.height,
            "duplicates": total - index.height, "new_duplicates": docs - (index.height - earlier)}


@register_stage
class ExactDedup(GlobalStage):
    kind = "exact_dedup"
    version = "1"
    fit_policy = "incremental"
    needs = ("text", "source", "src_file", "src_offset")
    Params = ExactDedupParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "dup_group_size": pa.int64(), "survivor_id": pa.string()}

    def _frame(self, batch: pl.DataFrame) -> pl.DataFrame:
        norm = batch.select(_normalised(pl.col("text"), self.params.normalise)).to_series()  # type: ignore[attr-defined]
        return batch.select("id", "source", "src_file", "src_offset").with_columns(_hashes(norm).alias("h"))

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        return self._update(None, batches, artifact_dir)

    def fit_incremental(self, previous_dir: str, batches: Iterator[pl.DataFrame], artifact_dir: str,
                        earlier: EarlierRows) -> dict[str, Any]:
        return self._update(previous_dir, batches, artifact_dir)

    def _update(self, previous_dir: str | None, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        """The index of the earlier documents (``previous_dir``; none for a first fit) plus
        ``batches``: every distinct hash with its first document in lake order and its group
        size. Earlier documents come first in lake order, so an earlier first occurrence stays
        the survivor and a full fit over the same documents gives the same index."""
        parts = [self._frame(b) for b in batches]
        return self._merged(previous_dir, _first_by_hash(pl.concat(parts)) if parts else None,
                            sum(p.height for p in parts), artifact_dir)

    @staticmethod
    def _merged(previous_dir: str | None, new: pl.DataFrame | None, docs: int, artifact_dir: str) -> dict[str, Any]:
        """Write the earlier index (``previous_dir``; none for a first fit) merged with ``new`` (one
        row per hash of the new documents: first occurrence, group size; any row order)."""
        old = (pl.read_parquet(f"{previous_dir}/{INDEX_FILE}") if previous_dir
               else pl.DataFrame(schema=INDEX_SCHEMA))
        if new is None:
            return _write_index(old, old.height, docs, artifact_dir)
        # The earlier rows come first, so an earlier first occurrence stays the survivor.
        index = (pl.concat([old, new]).group_by("h", maintain_order=True)
                 .agg(pl.col("id").first(), pl.col("source").first(), pl.col("src_file").first(),
                      pl.col("src_offset").first(), pl.col("size").sum())
                 .sort("h"))
        return _write_index(index, old.height, docs, artifact_dir)

    # --- the fit in partitions of hashes (engines.partitioned_fit): the Ray executor runs one
    # task per shard (hashing) and one per partition (first occurrence); the same index results.
    fit_key = "h"

    def fit_map(self, batch: pl.DataFrame, row: int) -> tuple[pl.DataFrame, None]:
        return self._frame(batch), None

    def fit_reduce(self, frames: list[tuple[int, pl.DataFrame]]) -> pl.DataFrame:
        return _first_by_hash(pl.concat([f for _, f in frames]))

    def fit_finish(self, parts: Iterator[pl.DataFrame], sides: Sides, documents: int,
                   artifact_dir: str) -> dict[str, Any]:
        found = list(parts)
        return self._merged(None, pl.concat(found) if found else None, documents, artifact_dir)

    def fit_finish_incremental(self, previous_dir: str, parts: Iterator[pl.DataFrame], sides: Sides, documents: int,
                               artifact_dir: str) -> dict[str, Any]:
        found = list(parts)
        return self._merged(previous_dir, pl.concat(found) if found else None, documents, artifact_dir)

    def setup(self, ctx: StageContext) -> None:
        assert ctx.artifact_dir, "exact_dedup needs its fitted artifact"
        groups = pl.from_arrow(pq.read_table(f"{ctx.artifact_dir}/duplicate_groups.parquet"))
        assert isinstance(groups, pl.DataFrame)
        self._groups = groups

    def transform(self, batch: pl.DataFrame) -> pl.DataFrame:
        f = self._frame(batch).join(
            self._groups.rename({"id": "s_id", "source": "s_source", "src_file": "s_file", "src_offset": "s_offset"}),
            on="h", how="left", maintain_order="left")
        is_dup = pl.col("size").is_not_null() & ~((pl.col("source") == pl.col("s_source"))
                                                  & (pl.col("src_file") == pl.col("s_file"))
                                                  & (pl.col("src_offset") == pl.col("s_offset")))
        return f.select(
            (~is_dup).alias("keep"),
            pl.when(is_dup).then(pl.lit("exact_duplicate")).otherwise(pl.lit(None, pl.String)).alias("reason"),
            pl.col("size").fill_null(1).cast(pl.Int64).alias("dup_group_size"),
            pl.when(pl.col("size").is_not_null()).then(pl.col("s_id")).otherwise(pl.col("id")).alias("survivor_id"),
        )
