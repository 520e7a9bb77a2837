"""Source readers (JSONL, Parquet, Hugging Face datasets, WARC) and the ingest stage.

Every reader is a generator ``read(path, source) -> Iterator[pa.Table | Quarantined]``: tables of
native columns plus an ``__offset`` int64 column (where each row sits in the file), interleaved
with ``Quarantined`` entries for what could not be read. Readers never raise for bad content;
they raise only for programming errors. ``readers.ingest`` turns tables into DOCUMENT shards.
"""
