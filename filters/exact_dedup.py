"""``exact_dedup``: flag exact duplicates (after normalisation) across all sources.

A global stage. **Fit** streams the corpus oldest ingest first (then sources in pipeline order,
shard, row: ``Lake.shards_by_age``) and hashes each normalised text; for every hash seen more
than once it records the first occurrence, which is the survivor (a documented, deterministic
rule: the earliest ingested document, so a nightly run drops new copies of what earlier releases
already contain, never the released document). **Apply** marks every other member of the group ``keep=false`` with
reason ``exact_duplicate`` and names the survivor.

Normalisation (default): Unicode NFKC is not applied; text is lower-cased, runs of whitespace
collapse to one space, and leading/trailing whitespace is stripped, so copies that differ only in
case or spacing are duplicates. Set ``normalise: false`` for byte-exact matching.

Hash: the first 8 bytes of BLAKE2b over the UTF-8 normalised text (collision odds about n^2/2^65:
about 3e-6 for ten million documents). Cost: one hash per document (C speed plus ~1 µs of Python
per row); the fit keeps the hash, id and position of every document while grouping (about 100
bytes per document, 1 GB per ten million); the artifact holds only duplicated hashes.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from engines.stage import GlobalStage, StageContext, register_stage


class ExactDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    normalise: bool = True
    """Compare lower-cased text with whitespace collapsed; copies after the first in lake order are
    dropped (``exact_duplicate``). ``false``: byte-exact."""


def _normalised(text: pl.Expr, normalise: bool) -> pl.Expr:
    if not normalise:
        return text
    return text.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def _hashes(texts: pl.Series) -> pl.Series:
    return pl.Series("h", [int.from_bytes(hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=8).digest(), "little",
                                          signed=True) for t in texts.to_list()], dtype=pl.Int64)


@register_stage
class ExactDedup(GlobalStage):
    kind = "exact_dedup"
    version = "1"
    needs = ("text", "source", "src_file", "src_offset")
    Params = ExactDedupParams

    def writes(self) -> dict[str, pa.DataType]:
        return {"keep": pa.bool_(), "reason": pa.string(), "dup_group_size": pa.int64(), "survivor_id": pa.string()}

    def _frame(self, batch: pl.DataFrame) -> pl.DataFrame:
        norm = batch.select(_normalised(pl.col("text"), self.params.normalise)).to_series()  # type: ignore[attr-defined]
        return batch.select("id", "source", "src_file", "src_offset").with_columns(_hashes(norm).alias("h"))

    def fit(self, batches: Iterator[pl.DataFrame], artifact_dir: str) -> dict[str, Any]:
        parts = [self._frame(b).with_row_index("_pos") for b in batches]
        if not parts:
            frame = pl.DataFrame(schema={"h": pl.Int64, "id": pl.String, "source": pl.String, "src_file": pl.String,
                                         "src_offset": pl.Int64, "size": pl.UInt32})
        else:
            # Lake order is the order of batches, then rows: a global sequence number keeps it.
            seq = pl.concat([p.with_columns(pl.lit(i).alias("_batch")) for i, p in enumerate(parts)])
            frame = (seq.sort("_batch", "_pos")
                     .group_by("h", maintain_order=True)
                     .agg(pl.col("id").first(), pl.col("source").first(), pl.col("src_file").first(),
                          pl.col("src_offset").first(), pl.len().alias("size"))
                     .filter(pl.col("size") > 1))
        pq.write_table(frame.to_arrow(), f"{artifact_dir}/duplicate_groups.parquet")
        docs = sum(p.height for p in parts)
        return {"documents": docs, "groups": frame.height,
                "duplicates": int(frame.get_column("size").sum() or 0) - frame.height}

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
