"""Megatron-LM export: a tokenised ``.bin``/``.idx`` pair per source, plus the weighted blend.

Layout::

    out/<source>_text_document.bin    token ids of the source's documents, in release order
    out/<source>_text_document.idx    Megatron's MMIDIDX index
    out/data_args.txt                 "w1 prefix1 w2 prefix2 ..." for --data-args-path / --data-path
    out/blend.json                    the same blend with rows, tokens and the planned weights

The index is Megatron's memory-mapped format (``megatron.core.datasets.indexed_dataset``), written
here with NumPy: the 9-byte magic ``MMIDIDX\\x00\\x00``, version 1 (<Q), the dtype code (<B:
8 for uint16, 4 for int32), the number of sequences (<Q) and of document boundaries (<Q), then
the sequence lengths (int32), their byte offsets in the ``.bin`` (int64) and the document
boundaries (int64, ``0..n``: one sequence per document). Each document ends with the
end-of-text token, as ``preprocess_data.py --append-eod`` makes it.

Blend weights are each source's share of the exported tokens: Megatron's ``BlendedDataset``
samples prefixes in proportion to their weights, so these reproduce the release's mixture (its
planned weights, with repeats already materialised) for one pass over the release. Within a
source the release's order is kept; the blend interleaves sources by weight, so a global
curriculum across sources is approximated, not reproduced, by Megatron's sampler.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl

from warehouse.export.release_reader import Release, SourceCounter, iter_shards
from warehouse.export.token_cache import ShardTokenizer

MAGIC = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}


def prefix_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source) + "_text_document"


def write_index(path: Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """Write a Megatron MMIDIDX ``.idx`` for documents of the given token lengths."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    if n:
        pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize)
    docs = np.arange(n + 1, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
        f.write(struct.pack("<Q", n))
        f.write(struct.pack("<Q", n + 1))
        f.write(lengths.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(docs.tobytes(order="C"))


def write(release: Release, out: Path, tokenizer: ShardTokenizer | None = None) -> dict[str, Any]:
    if tokenizer is None:
        raise ValueError("the megatron format is tokenised: give a tokenizer file")
    counter = SourceCounter()
    bins: dict[str, BinaryIO] = {}
    lengths: dict[str, list[np.ndarray]] = {}
    try:
        for entry, table in iter_shards(release, columns=["text", "source"]):
            flat, lens = tokenizer.encode_shard(entry, table.num_rows, table.column("text").to_pylist)
            src = pl.from_arrow(table.column("source"))
            assert isinstance(src, pl.Series)
            names = src.cast(pl.String).unique(maintain_order=True).to_list()
            codes = src.cast(pl.String).replace_strict(names, list(range(len(names))), return_dtype=pl.Int32).to_numpy()
            tok_codes = np.repeat(codes, lens) if len(names) > 1 else None
            for k, s in enumerate(names):
                if s not in bins:
                    path = out / f"{prefix_name(s)}.bin"
                    if path.exists():
                        raise ValueError(f"two sources map to the Megatron prefix {prefix_name(s)}")
                    bins[s] = open(path, "wb")
                    lengths[s] = []
                doc_mask = codes == k
                part = flat if tok_codes is None else flat[tok_codes == k]
                part.tofile(bins[s])
                lengths[s].append(lens[doc_mask])
                counter.add(s, int(doc_mask.sum()), int(part.size))
    finally:
        for f in bins.values():
            f.close()
    for s, parts in lengths.items():
        write_index(out / f"{prefix_name(s)}.idx", np.concatenate(parts), tokenizer.dtype)
    tot = max(1, counter.tokens)
    mix = release.mixture()
    planned = mix.get("weights") or (mix.get("mixture") or {}).get("weights") or {}
    blend = [{"source": s, "prefix": prefix_name(s), "weight": v["tokens"] / tot, "rows": v["rows"],
              "tokens": v["tokens"], "planned_weight": planned.get(s)}
             for s, v in counter.per.items()]
    (out / "data_args.txt").write_text(" ".join(f"{b['weight']:.10f} {b['prefix']}" for b in blend) + "\n")
    (out / "blend.json").write_text(json.dumps({"blend": blend, "tokenizer": tokenizer.describe()}, indent=2,
                                               sort_keys=True) + "\n")
    files = [f"{b['prefix']}.{ext}" for b in blend for ext in ("bin", "idx")] + ["data_args.txt", "blend.json"]
    return {"rows": counter.rows, "tokens": counter.tokens, "sources": counter.per, "files": files, "blend": blend}
