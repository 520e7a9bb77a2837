"""MosaicML Streaming export: one MDS dataset per source, written with ``streaming.MDSWriter``,
plus the stream proportions that recreate the release's mixture.

Layout::

    out/<source>/index.json, shard.00000.mds ...   one MDS dataset per source, release order
    out/streams.json                               [{name, local, proportion, rows, tokens}, ...]

Columns: ``id``, ``text``, ``source`` (str), ``n_tokens`` (int64) and, with a tokenizer,
``tokens`` (``ndarray:uint16`` or ``ndarray:int32``, end-of-text appended; ``n_tokens`` is then
its length). A trainer builds ``Stream(local=out/<source>, proportion=p)`` for each entry and a
``StreamingDataset(streams=..., shuffle=...)``. ``proportion`` is the source's share of the
exported rows: Streaming draws that share of every epoch's samples from the stream, so one
epoch holds each source's documents as often as the release does (the mixture's weights, with
repeats already materialised). Read one stream alone with ``shuffle=False`` to get the
release's order within that source.

``streaming``'s top-level package imports its torchvision-based vision datasets; where
torchvision cannot load (a CPU-only PyTorch without a matching torchvision build), ``load``
imports the same writer and reader from ``streaming.base`` without that package initialiser.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from engines.extras import EXTRAS
from engines.extras import check as check_extras
from warehouse.export.release_reader import Release, SourceCounter, iter_shards
from warehouse.export.token_cache import ShardTokenizer


def load() -> types.SimpleNamespace:
    """``MDSWriter``, ``StreamingDataset`` and ``Stream`` from mosaicml-streaming."""
    check_extras("the mds format", {"export": EXTRAS["export"]})
    try:
        mod = importlib.import_module("streaming")
        return types.SimpleNamespace(MDSWriter=mod.MDSWriter, StreamingDataset=mod.StreamingDataset, Stream=mod.Stream)
    except (ImportError, RuntimeError, OSError, AttributeError):
        sys.modules.pop("streaming", None)
    spec = importlib.util.find_spec("streaming")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the mds format needs the mosaicml-streaming package: "
                          "pip install --no-deps mosaicml-streaming==0.10.0 (its own pins need transformers<5)")
    pkg = types.ModuleType("streaming")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["streaming"] = pkg
    base = importlib.import_module("streaming.base")
    return types.SimpleNamespace(MDSWriter=base.MDSWriter, StreamingDataset=base.StreamingDataset, Stream=base.Stream)


def stream_dir(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source)


def write(release: Release, out: Path, tokenizer: ShardTokenizer | None = None, compression: str | None = None,
          size_limit: int = 1 << 26) -> dict[str, Any]:
    lib = load()
    columns = {"id": "str", "text": "str", "source": "str", "n_tokens": "int64"}
    if tokenizer is not None:
        columns["tokens"] = f"ndarray:{tokenizer.dtype.name}"
    writers: dict[str, Any] = {}
    counter = SourceCounter()
    try:
        for entry, table in iter_shards(release, columns=["id", "text", "source", "n_tokens"]):
            ids = table.column("id").to_pylist()
            texts = table.column("text").to_pylist()
            sources = table.column("source").to_pylist()
            if tokenizer is not None:
                flat, lens = tokenizer.encode_shard(entry, table.num_rows, texts)
                offs = np.concatenate([[0], np.cumsum(lens)])
            else:
                lens = table.column("n_tokens").to_numpy()
            for i, s in enumerate(sources):
                w = writers.get(s)
                if w is None:
                    d = out / stream_dir(s)
                    if d.exists():
                        raise ValueError(f"two sources map to the stream folder {d.name}")
                    w = writers[s] = lib.MDSWriter(out=str(d), columns=columns, compression=compression,
                                                   size_limit=size_limit, progress_bar=False)
                row = {"id": ids[i], "text": texts[i], "source": s, "n_tokens": int(lens[i])}
                if tokenizer is not None:
                    row["tokens"] = flat[offs[i]:offs[i + 1]]
                w.write(row)
                counter.add(s, 1, int(lens[i]))
    finally:
        for w in writers.values():
            w.finish()
    total_rows = max(1, counter.rows)
    mix = release.mixture()
    planned = mix.get("weights") or (mix.get("mixture") or {}).get("weights") or {}
    streams = [{"name": s, "local": stream_dir(s), "proportion": v["rows"] / total_rows, "rows": v["rows"],
                "tokens": v["tokens"], "planned_weight": planned.get(s)} for s, v in counter.per.items()]
    (out / "streams.json").write_text(json.dumps({"streams": streams, "columns": columns,
                                                  "tokenizer": tokenizer.describe() if tokenizer else None},
                                                 indent=2, sort_keys=True) + "\n")
    return {"rows": counter.rows, "tokens": counter.tokens, "sources": counter.per, "streams": streams,
            "files": [s["local"] for s in streams] + ["streams.json"]}
