"""``n_tokens`` of the released text: whitespace-separated tokens until a tokenizer is configured.

A token is a maximal run of characters outside Unicode White_Space (U+001C..U+001F are not
White_Space): what the regex ``\\S+`` matches in Polars (Rust's regex), the release's definition
since its first version. The release counts every kept document once, so the count is on its
critical path: Polars' regex runs at ~10-30 MB/s of text here, the compiled kernel
(``token_counts`` in ``filters/heuristics/csrc/chunks.c``, one pass over the UTF-8 bytes) at
~1 GB/s. Without the kernel (no C compiler at install time, ``CURATE_NATIVE=0``) the regex gives
the same counts (``tests/test_release_tokens.py`` compares both on the corpora and on every
whitespace character).
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from engines.strings import arrow_buffers, string_buffers
from filters.heuristics.chunking import ext

TOKEN_REGEX = r"\S+"


def count_tokens(texts: pl.Series) -> pl.Series:
    """Tokens per text as Int64 (null where the text is null), named ``n_tokens``."""
    mod = ext()
    if mod is None:
        return texts.str.count_matches(TOKEN_REGEX).cast(pl.Int64).alias("n_tokens")
    data, offsets = string_buffers(texts)
    out = np.empty(len(texts), dtype=np.int64)
    mod.token_counts(data, offsets, out)
    counts = pl.Series("n_tokens", out, dtype=pl.Int64)
    return counts if not texts.has_nulls() else pl.select(
        pl.when(texts.is_null()).then(None).otherwise(counts).alias("n_tokens")).to_series()


def count_tokens_arrow(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``count_tokens`` of an Arrow string column (string or large_string), as an int64 array:
    the kernel reads each chunk's bytes and offsets in place, so the text is not copied (the
    release counts the text of the table it writes). Null where the text is null."""
    mod = ext()
    if mod is None:
        return count_tokens(pl.Series("text", texts)).to_arrow()
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    parts = []
    for arr in chunks:
        data, offsets = arrow_buffers(arr)
        out = np.empty(len(arr), dtype=np.int64)
        mod.token_counts(data, offsets, out)
        parts.append(pa.array(out, mask=arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None))
    return pa.concat_arrays(parts) if parts else pa.array([], pa.int64())
