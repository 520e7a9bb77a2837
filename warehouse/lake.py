"""Where everything lives in a lake (a local folder today; fsspec URLs by design).

    raw/<source>/<ingest-run>/part-<file>-<k>.parquet        text + provenance (DOCUMENT)
    raw/<source>/<ingest-run>/_done/<file>.json               per-input-file completion markers
    annotations/<stage-key>/<source>/<ingest-run>/<part>      id + the stage's columns, row-aligned
    artifacts/<stage-key>/...                                 fitted models, indexes, plans
    quarantine/<ingest-run or run>/<source>/...               rows that could not be read
    releases/<name>/<version>/shard-000000.parquet            training order + manifest.json
    releases/<name>/LATEST                                    a pointer (the version), never a copy
    catalog.duckdb                                            the warehouse
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from engines import storage
from engines.storage_duckdb import catalog_path
from warehouse.supersede import live_markers


@dataclass(frozen=True)
class Lake:
    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", self.root.rstrip("/"))

    @property
    def catalog_path(self) -> str:
        """``<lake>/catalog.duckdb``; a local file elsewhere for a remote lake (engines.storage_duckdb)."""
        return catalog_path(self.root)

    def raw_dir(self, source: str, ingest_run: str) -> str:
        return f"{self.root}/raw/{source}/{ingest_run}"

    def ingest_markers(self, source: str, superseded: bool = False) -> list[dict]:
        """The completion records of every input file ingested for a source (all ingest runs).

        The lake, not the catalog, is the source of truth: a file counts as ingested only once
        its marker exists, and a shard counts only if a marker lists it, so the parts of a file
        whose ingest was killed half-way are never read. An ingest that a later one superseded
        (warehouse.supersede) is left out unless ``superseded=True``.
        """
        out = []
        for path in storage.glob(f"{self.root}/raw/{source}/*/_done/*.json"):
            fs, p = storage.fs_and_path(path)
            with fs.open(p, "r") as f:
                marker = json.load(f)
            # Re-anchor part paths on where the marker is now, so a moved lake still works.
            run_dir = path.rsplit("/", 2)[0]
            for part in marker["parts"]:
                part["path"] = f"{run_dir}/{part['path'].rsplit('/', 1)[-1]}"
            out.append((path, marker))
        return [m for _, m in out] if superseded else live_markers(out)

    def shards_by_age(self, sources: list[str]) -> list[tuple[str, str]]:
        """(source, shard) of several sources, oldest ingest first, then pipeline source order.

        Global stages read the corpus in this order, so "the first occurrence survives" means
        the document ingested (and so released) earliest: a nightly run never drops a document
        an earlier release kept in favour of a new copy of it.
        """
        rows = []
        for i, src in enumerate(sources):
            for m in self.ingest_markers(src):
                for part in m["parts"]:
                    rows.append((m.get("ingested_at", ""), i, part["path"], src))
        return [(src, path) for _, _, path, src in sorted(rows)]

    def raw_shards(self, source: str) -> list[str]:
        """Every completed raw shard of a source, all ingest runs, in (ingest run, part) order."""
        return sorted(part["path"] for m in self.ingest_markers(source) for part in m["parts"])

    def annotation_path(self, stage_key: str, raw_shard: str) -> str:
        rel = raw_shard[len(f"{self.root}/raw/"):]
        return f"{self.root}/annotations/{stage_key}/{rel}"

    def artifact_dir(self, stage_key: str) -> str:
        return f"{self.root}/artifacts/{stage_key}"

    def quarantine_dir(self, run: str, source: str) -> str:
        return f"{self.root}/quarantine/{run}/{source}"

    def release_dir(self, name: str, version: str | None = None) -> str:
        return f"{self.root}/releases/{name}" + (f"/{version}" if version else "")

    def source_of(self, raw_shard: str) -> str:
        return raw_shard[len(f"{self.root}/raw/"):].split("/", 1)[0]

    def ingest_run_of(self, raw_shard: str) -> str:
        return raw_shard[len(f"{self.root}/raw/"):].split("/")[1]
