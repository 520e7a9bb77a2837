"""The reader of each ``sources[].format``, imported on first use (``datasets`` alone takes
about half a second to import, and a JSONL-only pipeline should not pay for it in every worker)."""
from __future__ import annotations

import importlib

from readers.base import Reader

READERS: dict[str, str] = {
    "jsonl": "readers.jsonl:read_jsonl",
    "parquet": "readers.parquet:read_parquet",
    "hf": "readers.hf:read_hf",
    "hf_disk": "readers.hf:read_hf_disk",
    "warc": "readers.warc:read_warc",
}


def get_reader(fmt: str) -> Reader:
    """The reader function for a format name; ValueError naming the known formats otherwise."""
    try:
        module, func = READERS[fmt].split(":")
    except KeyError:
        raise ValueError(f"unknown source format {fmt!r}; sources[].format must be one of: "
                         f"{', '.join(sorted(READERS))}") from None
    return getattr(importlib.import_module(module), func)
