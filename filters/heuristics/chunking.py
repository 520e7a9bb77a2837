"""Whitespace chunks of a batch of texts, numbered by distinct value: the first step of the
heuristic filters' word splitting (``words.chunk_table``).

With the compiled kernel (``csrc/chunks.c``, built at install time) one pass over the UTF-8
bytes cuts the chunks and numbers the distinct ones with a hash table; without it, a Polars regex
extraction, an explode and a categorical encoding do the same (``tests/heuristics`` checks that
both give the same chunks, rows and codes). Chunks are runs of characters outside Python's
``str.isspace`` set (Unicode White_Space plus U+001C..U+001F), as spaCy cuts text; distinct chunks
are numbered in order of first appearance.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import polars as pl
import pyarrow as pa

from engines import native
from engines.strings import string_buffers

ABI = 3
EXTENSION = "filters.heuristics._chunks"


def ext() -> Any:
    return native.load(EXTENSION, ABI)


def chunk_codes(texts: pl.Series, regex: str, encode: Callable[[pl.Series], tuple[np.ndarray, pl.Series]]
                ) -> tuple[np.ndarray, np.ndarray, pl.Series, np.ndarray]:
    """(row of each chunk occurrence, its code, the distinct chunks by code, chunks per text).

    ``regex`` (the non-whitespace run) and ``encode`` are the Polars path used without the kernel.
    """
    mod = ext()
    if mod is None:
        chunk_lists = texts.str.extract_all(regex)
        counts = chunk_lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        row = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
        code, dictionary = encode(chunk_lists.explode().drop_nulls())
        return row, code, dictionary, counts
    data, offsets = string_buffers(texts)
    n_chunks, n_bytes = mod.chunk_count(data, offsets)
    row = np.empty(n_chunks, dtype=np.int64)
    code = np.empty(n_chunks, dtype=np.int64)
    uniq_off = np.empty(n_chunks + 1, dtype=np.int64)
    uniq_data = np.empty(max(1, n_bytes), dtype=np.uint8)
    n_uniq = mod.chunk_encode(data, offsets, row, code, uniq_off, uniq_data)
    arr = pa.LargeStringArray.from_buffers(n_uniq, pa.py_buffer(uniq_off[:n_uniq + 1]),
                                           pa.py_buffer(uniq_data[:int(uniq_off[n_uniq])]))
    dictionary = pl.Series("chunk", arr, dtype=pl.String)
    counts = np.bincount(row, minlength=len(texts)).astype(np.int64) if n_chunks else np.zeros(len(texts), np.int64)
    return row, code, dictionary, counts


def item_stats(texts: pl.Series, paragraphs: bool) -> dict[str, np.ndarray] | None:
    """Per text: its paragraphs or lines, how many equal an earlier one, and their characters
    (``n_items``, ``dup_items``, ``dup_chars``), or None without the compiled kernel."""
    mod = ext()
    if mod is None:
        return None
    data, offsets = string_buffers(texts)
    n = len(texts)
    out = {c: np.empty(n, dtype=np.int64) for c in ("n_items", "dup_items", "dup_chars")}
    mod.dup_stats(data, offsets, int(paragraphs), out["n_items"], out["dup_items"], out["dup_chars"])
    return out
