"""Where everything lives in a lake (a local folder today; fsspec URLs by design).

    raw/<source>/<ingest-run>/part-<file>-<k>.parquet        text + provenance (DOCUMENT)
    raw/<source>/<ingest-run>/_done/<file>.json               per-input-file completion markers
    raw/<source>/<ingest-run>/_run.json                       when the ingest run was planned (lake order)
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
from warehouse.errors import DamagedFile
from warehouse.supersede import live_markers

# Written once per ingest run when it is planned: the run's place in lake order.
INGEST_RUN_RECORD = "_run.json"


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
            try:
                with fs.open(p, "r") as f:
                    marker = json.load(f)
            except ValueError as e:
                raise DamagedFile(path, f"ingest marker is not valid JSON ({e})") from None
            # Re-anchor part paths on where the marker is now, so a moved lake still works.
            run_dir = path.rsplit("/", 2)[0]
            for part in marker["parts"]:
                part["path"] = f"{run_dir}/{part['path'].rsplit('/', 1)[-1]}"
            out.append((path, marker))
        return [m for _, m in out] if superseded else live_markers(out)

    def record_ingest_run(self, source: str, ingest_run: str, planned_at: str, run_id: str) -> None:
        """Write ``raw/<source>/<ingest-run>/_run.json`` once: when (which pipeline run) planned it.

        Every file of the ingest run shares this time, so lake order cannot depend on which
        worker finished first; a resumed ingest run (after a crash) keeps its first record.
        """
        path = f"{self.raw_dir(source, ingest_run)}/{INGEST_RUN_RECORD}"
        if storage.exists(path):
            return
        fs = storage.fs_and_path(path)[0]
        with storage.atomic_path(path) as tmp:
            with fs.open(tmp, "w") as f:
                json.dump({"source": source, "ingest_run": ingest_run, "planned_at": planned_at, "run_id": run_id}, f)

    def _ordered_parts(self, source: str) -> list[tuple[tuple[str, str, str, int], str]]:
        """((ingest time, ingest run, input file, part), shard path) of every completed shard.

        The ingest time is the planning time of the shard's ingest run (``_run.json``), shared
        by all its files; lakes written before that record existed fall back to the earliest
        ``ingested_at`` of the run's files, which is equally fixed once the run is complete.
        """
        markers = self.ingest_markers(source)
        by_run: dict[str, list[dict]] = {}
        for m in markers:
            by_run.setdefault(m.get("ingest_run") or "", []).append(m)
        out = []
        for run, ms in by_run.items():
            when = self._planned_at(source, run) or min(m.get("ingested_at", "") for m in ms)
            for m in ms:
                for k, part in enumerate(m["parts"]):
                    out.append(((when, run, m.get("file", ""), k), part["path"]))
        return out

    def _planned_at(self, source: str, ingest_run: str) -> str | None:
        path = f"{self.raw_dir(source, ingest_run)}/{INGEST_RUN_RECORD}" if ingest_run else ""
        if not path or not storage.exists(path):
            return None
        fs, p = storage.fs_and_path(path)
        with fs.open(p, "r") as f:
            return str(json.load(f).get("planned_at") or "") or None

    def shards_by_age(self, sources: list[str]) -> list[tuple[str, str]]:
        """(source, shard) of several sources, oldest ingest run first, then pipeline source
        order, input file path and part: an order defined by the input, never by timing.

        Global stages read the corpus in this order, so "the first occurrence survives" means
        the document ingested (and so released) earliest: a nightly run never drops a document
        an earlier release kept in favour of a new copy of it.
        """
        rows = []
        for i, src in enumerate(sources):
            for (when, run, file, k), path in self._ordered_parts(src):
                rows.append(((when, i, run, file, k), src, path))
        return [(src, path) for _, src, path in sorted(rows)]

    def raw_shards(self, source: str) -> list[str]:
        """Every completed raw shard of a source, all ingest runs, oldest ingest run first, then
        input file path and part (the order of ``shards_by_age`` for one source)."""
        return [path for _, path in sorted(self._ordered_parts(source))]

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
