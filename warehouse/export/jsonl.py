"""JSONL export: one ``shard-NNNNNN.jsonl`` per release shard, one JSON object per document.

Every release column is kept (``id``, ``text``, ``source``, provenance, ``n_tokens``...), in the
release's training order; timestamps are written as ISO 8601 strings. With a tokenizer,
``n_tokens`` is recounted with it (no ids are written: use ``hf``, ``mds`` or ``megatron`` for
tokenised output). Read back with any JSON-lines reader, e.g. ``datasets.load_dataset("json",
data_files=sorted(glob("out/*.jsonl")))``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from warehouse.export.release_reader import Release, SourceCounter, iter_shards
from warehouse.export.token_cache import ShardTokenizer


def write(release: Release, out: Path, tokenizer: ShardTokenizer | None = None) -> dict[str, Any]:
    counter = SourceCounter()
    files = []
    for i, (entry, table) in enumerate(iter_shards(release)):
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        if tokenizer is not None:
            _, lens = tokenizer.encode_shard(entry, df.height, df.get_column("text").to_list)
            df = df.with_columns(pl.Series("n_tokens", lens, dtype=pl.Int64))
        for c, dt in df.schema.items():
            if dt.base_type() == pl.Datetime:
                df = df.with_columns(pl.col(c).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z"))
        name = f"shard-{i:06d}.jsonl"
        df.write_ndjson(out / name)
        counter.add_table(table.column("source"), df.get_column("n_tokens").to_numpy())
        files.append({"file": name, "rows": df.height})
    return {"rows": counter.rows, "tokens": counter.tokens, "sources": counter.per, "files": files}
