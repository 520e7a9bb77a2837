"""Arrow schemas shared by every stage.

DOCUMENT is the schema of raw shards (``lake/raw/<source>/<ingest-run>/part-*.parquet``).
Text is written once, here; every later stage writes a small annotation file whose rows are
aligned one-to-one, in order, with the raw shard it was computed from.

Document ids (see ``readers.ids``) are 32 hex characters: the first 128 bits of
sha256(source + 0x1F + key), where key is the native id column when one is mapped, else the
URL, else the text itself. So re-ingesting the same record gives the same id, and two records
with identical text and no native id or URL share an id (they are exact duplicates anyway).
"""
from __future__ import annotations

import pyarrow as pa

DOCUMENT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("crawl_date", pa.timestamp("us", tz="UTC")),
        pa.field("license", pa.string()),
        # Everything of the input record that was not mapped to a column above, as JSON.
        pa.field("meta", pa.large_string()),
        pa.field("ingest_run", pa.string(), nullable=False),
        # Provenance: the input file and the position inside it (line number for JSONL,
        # row index for Parquet/HF, byte offset of the record for WARC).
        pa.field("src_file", pa.string(), nullable=False),
        pa.field("src_offset", pa.int64(), nullable=False),
    ]
)

# One row per thing that could not be read: a line, a record, a row group or a whole file.
QUARANTINE = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("file", pa.string()),
        pa.field("offset", pa.int64()),
        # How many input rows this entry stands for (1 when unknown, e.g. an unreadable footer).
        pa.field("rows", pa.int64()),
        pa.field("error", pa.string()),
        # The raw bytes (up to a cap) so nothing is lost even if the input file goes away.
        pa.field("raw", pa.large_binary()),
    ]
)


def annotation_schema(columns: dict[str, pa.DataType]) -> pa.Schema:
    """Schema of an annotation file: the document id, then the stage's own columns."""
    return pa.schema([pa.field("id", pa.string(), nullable=False)] + [pa.field(k, v) for k, v in columns.items()])
