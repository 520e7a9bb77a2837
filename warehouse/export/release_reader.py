"""Read a release folder shard by shard, in training order, and write export folders atomically.

A release folder (see ``warehouse.release``) holds ``manifest.json`` and the shards it lists
(``shard-000000.parquet``...), each with the document columns plus ``n_tokens``. The manifest's
``shards`` list is the training order; the reader follows it, checks each shard's sha256 against
the manifest (``verify=True``), and yields one Arrow table per shard, so an exporter never holds
more than one shard.

Exports are written into ``<out>.tmp-<pid>`` and renamed to ``<out>`` at the end: an export
folder either exists complete or not at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engines.storage_dirs import local_dir


class ReleaseError(ValueError):
    """The release folder is missing, incomplete or does not match its manifest."""


@dataclass
class Release:
    dir: Path
    manifest: dict[str, Any]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("shards", []))

    @property
    def label(self) -> str:
        return f"{self.manifest.get('name', self.dir.parent.name)}/{self.manifest.get('version', self.dir.name)}"

    def mixture(self) -> dict[str, Any]:
        """What the manifest says about the mixture (weights, phases, order, seed); may be empty."""
        keys = ("mixture", "weights", "order", "curriculum", "seed", "phases", "sampling")
        return {k: self.manifest[k] for k in keys if k in self.manifest}


def open_release(release_dir: str | Path) -> Release:
    """The release folder (a path, or a URL on a remote lake: read from a local copy, as a trainer's
    tools need local files; engines.storage_dirs.local_dir)."""
    d = Path(local_dir(str(release_dir)) if "://" in str(release_dir) else release_dir)
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise ReleaseError(f"{d} is not a release folder: no manifest.json")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{mpath} is not valid JSON: {e}") from None
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise ReleaseError(f"{mpath} has no shards list")
    for s in shards:
        if not isinstance(s, dict) or "file" not in s:
            raise ReleaseError(f"{mpath}: every shard entry needs a file name")
        if not (d / s["file"]).is_file():
            raise ReleaseError(f"{d}: shard {s['file']} listed in the manifest is missing")
    return Release(d, manifest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def iter_shards(release: Release, columns: list[str] | None = None, verify: bool = True) -> Iterator[tuple[dict[str, Any], pa.Table]]:
    """(manifest entry, table) per shard, in the manifest's (training) order."""
    for s in release.shards:
        path = release.dir / s["file"]
        if verify and s.get("sha256") and _sha256(path) != s["sha256"]:
            raise ReleaseError(f"{path}: sha256 differs from the manifest; the release was modified")
        table = pq.read_table(path, columns=columns)
        if "rows" in s and table.num_rows != int(s["rows"]):
            raise ReleaseError(f"{path}: {table.num_rows} rows, manifest says {s['rows']}")
        yield s, table


@contextmanager
def output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that becomes ``out_dir`` when the block succeeds."""
    out = Path(out_dir)
    if out.exists():
        if not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)


def write_export_manifest(tmp: Path, info: dict[str, Any]) -> None:
    (tmp / "export.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


class SourceCounter:
    """Rows and tokens per source, in first-seen order."""

    def __init__(self) -> None:
        self.per: dict[str, dict[str, int]] = {}

    def add(self, source: str, rows: int, tokens: int) -> None:
        acc = self.per.setdefault(source, {"rows": 0, "tokens": 0})
        acc["rows"] += int(rows)
        acc["tokens"] += int(tokens)

    def add_table(self, sources: pa.ChunkedArray | pa.Array, tokens: Any) -> None:
        import numpy as np
        import polars as pl

        src = pl.from_arrow(sources)
        assert isinstance(src, pl.Series)
        df = pl.DataFrame({"s": src.cast(pl.String), "t": np.asarray(tokens, dtype=np.int64)})
        for s, r, t in df.group_by("s", maintain_order=True).agg(pl.len(), pl.col("t").sum()).iter_rows():
            self.add(s, r, t)

    @property
    def rows(self) -> int:
        return sum(v["rows"] for v in self.per.values())

    @property
    def tokens(self) -> int:
        return sum(v["tokens"] for v in self.per.values())


def base_info(release: Release, fmt: str, out_dir: Path) -> dict[str, Any]:
    m = release.manifest
    return {"format": fmt, "release": {"dir": str(release.dir), "name": m.get("name"), "version": m.get("version"),
                                       "content_hash": m.get("content_hash"), "tokenizer": m.get("tokenizer")},
            "out_dir": str(out_dir), "mixture": release.mixture()}
