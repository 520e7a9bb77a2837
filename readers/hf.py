"""Hugging Face ``datasets`` readers: a ``save_to_disk`` folder, or local files through a builder."""
from __future__ import annotations

from collections.abc import Iterator

import datasets
import numpy as np
import pyarrow as pa

from readers.base import BATCH_ROWS, Quarantined, ReadItem
from readers.tables import finish
from schemas.config import SourceConfig

# Builder for a file extension, when sources[].hf_builder is not set.
BUILDERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}
_COMPRESSION = (".gz", ".zst", ".zstd", ".bz2", ".xz")


def infer_builder(path: str) -> str | None:
    """The datasets builder for a file name (``.jsonl.gz`` -> ``json``), or None if unknown."""
    name = path.lower()
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    return next((b for ext, b in BUILDERS.items() if name.endswith(ext)), None)


def _tables(path: str, source: SourceConfig, tables: Iterator[pa.Table], total: int | None,
            hint: str) -> Iterator[ReadItem]:
    """Number the rows of datasets' Arrow batches; an error from datasets ends the file with one
    Quarantined entry for the rest (its rows known only when ``total`` is)."""
    done = 0
    while True:
        try:
            table = next(tables, None)
        except Exception as e:  # datasets and its builders raise many unrelated exception types
            rows = total - done if total is not None else 1
            yield Quarantined(path, done, rows, f"datasets stopped at or after row {done} ({type(e).__name__}: {e}); "
                                                f"the rest of the file was skipped{hint}")
            return
        if table is None:
            return
        yield from finish(table, np.arange(done, done + table.num_rows), source.columns.text, source, path)
        done += table.num_rows


def read_hf_disk(path: str, source: SourceConfig) -> Iterator[ReadItem]:
    """Read a folder written by ``Dataset.save_to_disk`` (a local path or fsspec URL).

    ``__offset`` is the row index. The Arrow files are memory-mapped and read in batches of
    BATCH_ROWS rows, never turned into Python objects. A DatasetDict folder with one split reads
    that split; with several it is quarantined whole (point the path at one split's folder).
    A folder datasets cannot load is one Quarantined entry with ``offset=None``.

    Cost: about that of reading the Arrow files; memory is one batch.
    """
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # FileNotFoundError, JSON errors in its state files, Arrow errors...
        yield Quarantined(path, None, 1, f"datasets cannot load this folder ({type(e).__name__}: {e}); "
                                         "format hf_disk expects a folder written by Dataset.save_to_disk")
        return
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            yield Quarantined(path, None, sum(len(split) for split in ds.values()),
                              f"the folder holds a DatasetDict with splits {sorted(ds)}; list one split's folder "
                              f"in sources[].paths, e.g. {path.rstrip('/')}/{sorted(ds)[0]}")
            return
        ds = next(iter(ds.values()))
    tables = iter(ds.with_format("arrow").iter(batch_size=BATCH_ROWS))
    yield from _tables(path, source, tables, len(ds), "")


def read_hf(path: str, source: SourceConfig) -> Iterator[ReadItem]:
    """Read local files (or fsspec URLs) with ``datasets.load_dataset(builder, data_files=path,
    split="train", streaming=True)``.

    The builder is ``sources[].hf_builder``, else inferred from the extension (``.jsonl``/``.json``
    json, ``.csv`` csv, ``.parquet`` parquet, ``.txt`` text, ``.arrow`` arrow; compression suffixes
    are ignored). ``__offset`` is the row index. Streaming yields Arrow batches, so nothing is cached
    on disk and memory is one batch. datasets cannot skip a bad record: an error ends the file with
    one Quarantined entry from the last good row on (``rows=1``, since the rest is uncounted), which
    loses more than format ``jsonl`` or ``parquet``, whose readers quarantine one line or row group.

    Cost: about the builder's own reading speed (pyarrow for json, csv and parquet).
    """
    builder = source.hf_builder or infer_builder(path)
    if builder is None:
        yield Quarantined(path, None, 1, "cannot tell which datasets builder reads this file from its name; "
                                         "set sources[].hf_builder (json, csv, parquet, text or arrow)")
        return
    hint = "; format jsonl reads JSON Lines and quarantines single bad lines instead" if builder == "json" else ""
    try:
        ds = datasets.load_dataset(builder, data_files=path, split="train", streaming=True)
        tables = iter(ds.with_format("arrow").iter(batch_size=BATCH_ROWS))
    except Exception as e:  # see _tables
        yield Quarantined(path, None, 1, f"datasets cannot open this file with builder {builder!r} "
                                         f"({type(e).__name__}: {e}); check sources[].hf_builder and the path")
        return
    yield from _tables(path, source, tables, None, hint)
