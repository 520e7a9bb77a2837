"""The reader of each ``sources[].format``."""
from __future__ import annotations

from readers.base import Reader
from readers.hf import read_hf, read_hf_disk
from readers.jsonl import read_jsonl
from readers.parquet import read_parquet
from readers.warc import read_warc

READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "hf": read_hf,
    "hf_disk": read_hf_disk,
    "warc": read_warc,
}


def get_reader(fmt: str) -> Reader:
    """The reader function for a format name; ValueError naming the known formats otherwise."""
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown source format {fmt!r}; sources[].format must be one of: "
                         f"{', '.join(sorted(READERS))}") from None
