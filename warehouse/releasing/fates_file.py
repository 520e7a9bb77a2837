"""The per-document fates file of a release, written by the release step as it decides each row.

A release records counts per (source, stage, reason); the report, ``curate sample`` and ``curate
show`` need the documents behind them: one small row per raw document (id, source, raw shard,
row in it, fate, stage, reason), at ``<lake>/reports/NAME/VERSION/fates.parquet``
(``reports/NAME/_rejected/VERSION/`` for a release its gates stopped). The release step already
holds each chunk's decision, so it streams these rows into a scratch file beside the shards
(``FatesSink``) and moves it into the report folder once the release is committed (or rejected).
The report (warehouse/report/fates.py) then reads it instead of replaying every decision over
the raw text again. A release that stops before that point leaves no fates file; the report
then computes the same file by replay (same decisions, same rows: tests compare both).

Reasons are spelled as the catalog's ``drop_reasons`` spells them (``quarantined: ...`` for
quarantined rows). Cost: ~40 bytes per document written once; memory: one chunk's rows.
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa

from engines import storage
from warehouse.lake import Lake
from warehouse.releasing.publish import REJECTED

FATES_FILE = "fates.parquet"
FATES_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("raw", pa.string()), ("row", pa.int64()),
                          ("fate", pa.string()), ("stage", pa.string()), ("reason", pa.string())])


def report_dir(lake: Lake, name: str, version: str, rejected: bool = False) -> str:
    """``<lake>/reports/NAME/VERSION``: the report, its context and its per-document fates;
    ``reports/NAME/_rejected/VERSION`` for a release its gates stopped."""
    return f"{lake.root}/reports/{name}/" + (f"{REJECTED}/{version}" if rejected else version)


def catalog_reasons(decided: pl.DataFrame) -> pl.DataFrame:
    """``_reason`` as the catalog's drop_reasons spells it: quarantined rows get ``quarantined: ``."""
    return decided.with_columns(pl.when(pl.col("_fate") == "quarantined").then(pl.lit("quarantined: ") + pl.col("_reason"))
                                .otherwise(pl.col("_reason")).alias("_reason"))


def fate_rows(df: pl.DataFrame, raw: str, offset: int = 0) -> pa.Table:
    """The fates rows of decided rows (``_fate``/``_stage``/``_reason``, reasons already as the
    catalog spells them) that start at row ``offset`` of raw shard ``raw``."""
    return df.select(pl.col("id"), pl.col("source"), pl.lit(raw).alias("raw"),
                     pl.int_range(offset, offset + df.height, dtype=pl.Int64).alias("row"), pl.col("_fate").alias("fate"),
                     pl.col("_stage").alias("stage"), pl.col("_reason").alias("reason")
                     ).to_arrow().cast(FATES_SCHEMA)


class FatesSink:
    """Streams a release's fates rows into ``path`` (a local scratch file: the release's scratch
    folder), one table per decided chunk, in lake order; ``publish`` moves the finished file into
    a report folder."""

    def __init__(self, path: str):
        self.path = path
        self._writer = storage.parquet_writer(path, FATES_SCHEMA)
        self._raw, self._offset = "", 0

    def add(self, raw: str, decided: pl.DataFrame) -> None:
        """The next chunk of raw shard ``raw`` (chunks of a shard arrive in order)."""
        if raw != self._raw:
            self._raw, self._offset = raw, 0
        self._writer.write_table(fate_rows(catalog_reasons(decided), raw, self._offset))
        self._offset += decided.height

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def publish(self, folder: str) -> str | None:
        """Move the file to ``<folder>/fates.parquet`` (whole or absent); returns its URL, or None
        when it could not be written there (the report then computes it again by replay)."""
        self.close()
        url = f"{folder}/{FATES_FILE}"
        try:
            storage.move_file_atomic(self.path, url)  # the scratch folder is on a local lake's disk: a rename
        except OSError:
            return None
        return url
