"""Export a release to what trainers read: Hugging Face datasets, MosaicML Streaming (MDS),
Megatron-LM ``.bin``/``.idx`` with a blend, or JSONL.

``export_release(release_dir, out_dir, fmt, tokenizer_path=None)`` reads the release folder
(``manifest.json`` + shards, in training order), streams it shard by shard into ``out_dir``
(written beside it under a temporary name and renamed when complete), writes
``out_dir/export.json`` and returns the same dict: rows and tokens in all and per source, the
files written, the tokenizer (file, sha256, vocabulary, end-of-text token) and the release it
came from, ready to be recorded in the catalog or next to the release manifest.

| format | module | tokenizer | read back with |
|---|---|---|---|
| ``hf`` | ``warehouse.export.hf`` | optional (adds ``input_ids``) | ``datasets.load_dataset(out_dir, split="train")`` |
| ``mds`` | ``warehouse.export.mds`` | optional (adds ``tokens``) | ``streaming.StreamingDataset(streams=[Stream(local=..., proportion=...)])`` |
| ``megatron`` | ``warehouse.export.megatron`` | required | ``megatron.core.datasets.indexed_dataset.IndexedDataset(prefix)`` |
| ``jsonl`` | ``warehouse.export.jsonl`` | optional (recounts ``n_tokens``) | any JSON-lines reader |

Token counts come from the tokenizer when one is given, else from the release's ``n_tokens``.
A release is tokenised once per tokenizer: the ids are cached per release shard under
``<lake>/exports/NAME/VERSION/_tokens/`` and every later format reads them (``token_cache``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from warehouse.export.release_reader import ReleaseError, base_info, open_release, output_dir, write_export_manifest
from warehouse.export.token_cache import ShardTokenizer, default_cache_root
from warehouse.export.tokenize import TextTokenizer

FORMATS = ("hf", "mds", "megatron", "jsonl")
Format = Literal["hf", "mds", "megatron", "jsonl"]


def export_release(release_dir: str | Path, out_dir: str | Path, fmt: Format, tokenizer_path: str | Path | None = None,
                   *, overwrite: bool = False, append_eos: bool = True, eos_token: str | None = None,
                   token_cache: str | Path | None = "auto", **options: Any) -> dict[str, Any]:
    """Export one release folder to ``out_dir`` in format ``fmt``; returns the counts.

    ``token_cache``: the folder of cached token ids (warehouse.export.token_cache); ``"auto"``:
    ``<lake>/exports/NAME/VERSION/_tokens`` when the release folder is in a lake, else no cache;
    None: tokenise without a cache. The returned dict (not export.json) has ``token_cache``: its
    folder and the shards read from it (hits) or tokenised (misses).
    ``options`` go to the format's writer (``compression`` for hf and mds, ``size_limit`` for
    mds).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    release = open_release(release_dir)
    tokenizer = None
    if tokenizer_path is not None:
        root = default_cache_root(release.dir) if token_cache == "auto" else token_cache
        tokenizer = ShardTokenizer(TextTokenizer(tokenizer_path, append_eos=append_eos, eos_token=eos_token), root)
    elif fmt == "megatron":
        raise ValueError("the megatron format is tokenised: give tokenizer_path (a tokenizer.json)")
    if fmt == "hf":
        from warehouse.export import hf as mod
    elif fmt == "mds":
        from warehouse.export import mds as mod  # type: ignore[no-redef]
    elif fmt == "megatron":
        from warehouse.export import megatron as mod  # type: ignore[no-redef]
    else:
        from warehouse.export import jsonl as mod  # type: ignore[no-redef]
    t0 = time.perf_counter()
    out = Path(out_dir)
    with output_dir(out, overwrite=overwrite) as tmp:
        counts = mod.write(release, tmp, tokenizer, **options)
        info = base_info(release, fmt, out)
        info.update(counts)
        info["tokenizer"] = tokenizer.describe() if tokenizer else None
        info["token_source"] = "tokenizer" if tokenizer else "release n_tokens"
        write_export_manifest(tmp, info)  # no timings in the file: same inputs, same bytes
    info["seconds"] = round(time.perf_counter() - t0, 3)
    if tokenizer is not None:
        info["token_cache"] = {"dir": tokenizer.dir, "hits": tokenizer.hits, "misses": tokenizer.misses}
    return info


__all__ = ["FORMATS", "ReleaseError", "TextTokenizer", "export_release", "open_release"]
