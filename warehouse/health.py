"""A lake that heals: find damage (``curate check``), fix it (``curate repair``), and heal the
cheap things automatically at the start of every run.

What is checked, against what the lake itself records:

- raw shards: every part an ingest marker lists exists and its Parquet footer gives the rows the
  marker recorded (``deep``: every page is read with its checksum verified);
- ingest markers: readable JSON;
- annotation files: readable, as many rows as their raw shard, and the same ids in the same
  order (``deep``: every page read, checksums verified);
- releases: a complete manifest, and each shard it lists exists with its recorded size, rows
  and sha256;
- the catalog: opens, and holds every run record, journal entry, ingest marker and release of
  the lake (warehouse/runlog.py); runs left ``running`` with no live lock holder were killed;
- leftovers of atomic writes (``.tmp*`` names) older than the current lock holder (under
  ``exports/``, written without the lock, older than a day).

What ``repair`` does (holding the lake lock): re-ingest an input file whose raw shard is gone
or damaged (its marker, parts, annotations and quarantine file are removed, so the next run's
normal ingest redoes it; the input file must still exist unchanged, else ``drop_lost`` says to
forget those documents), delete damaged annotation files (the next run recomputes them),
rebuild a missing or damaged catalog and add what it lacks, mark killed runs ``failed``,
remove stale temporaries. Damaged releases are reported, not rewritten: a release is immutable.

At the start of each run (``heal_on_start``, under the lock): the catalog gets what it lacks,
killed runs are marked, stale temporaries removed, and input files whose raw shards have gone
missing are re-ingested. Checks that read data (row counts, ids, checksums) are left to
``curate check``: a run that meets a damaged file fails with an error naming it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Callable

import pyarrow.parquet as pq

from engines import storage
from engines.storage_duckdb import catalog_path
from warehouse import catalog_sync, runlog
from warehouse.catalog import Catalog
from warehouse.catalog_access import CatalogBusy, CatalogDamaged
from warehouse.errors import LakeError
from warehouse.lock import LOCK_DIR, held_lock, lock_holder
from warehouse.supersede import marker_id

log = logging.getLogger("curate.health")


@dataclass
class Finding:
    """One problem: what (``kind``), where (``path``), why, and what ``curate repair`` does about it."""

    kind: str
    path: str
    problem: str
    action: str
    repairable: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        todo = self.action if self.repairable else f"not repaired automatically: {self.action}"
        return f"{self.kind}: {self.path}: {self.problem} -> {todo}"


# --- reading files ---------------------------------------------------------------------------------
def parquet_problem(path: str, rows: int | None = None, deep: bool = False) -> str | None:
    """Why a Parquet file is unusable (unreadable footer, wrong row count, bad page), or None."""
    fs, p = storage.fs_and_path(path)
    try:
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f, page_checksum_verification=deep)
            n = pf.metadata.num_rows
            if rows is not None and n != rows:
                return f"has {n} rows, the lake recorded {rows}"
            if deep:
                for i in range(pf.num_row_groups):
                    pf.read_row_group(i)
    except FileNotFoundError:
        return "is missing"
    except Exception as e:  # noqa: BLE001 - any read error means damage; the message names it
        return f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return None


def _ids(path: str) -> list[str]:
    fs, p = storage.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=["id"]).column("id").to_pylist()


def _read_json(path: str) -> Any:
    fs, p = storage.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return json.loads(f.read())


# --- checks ----------------------------------------------------------------------------------------
def _all_markers(root: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(path, marker) of every readable ingest marker, and the paths of unreadable ones."""
    good, bad = [], []
    for marker_path in storage.glob(f"{root}/raw/*/*/_done/*.json"):
        try:
            m = _read_json(marker_path)
            if not isinstance(m.get("parts"), list):
                raise TypeError("no parts")
            good.append((marker_path, m))
        except (ValueError, TypeError, AttributeError):
            bad.append(marker_path)
    return good, bad


def live_markers(root: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, marker) of the ingests that count: readable and not superseded by a later ingest."""
    good, _ = _all_markers(root)
    superseded = {s for _, m in good for s in m.get("supersedes") or ()}
    return [(p, m) for p, m in good if marker_id(p) not in superseded]


def _check_raw(root: str, deep: bool) -> tuple[list[Finding], dict[str, int]]:
    """Live markers and the raw shards they list (superseded ingests are history: not judged);
    also returns {raw shard: rows} of the healthy ones."""
    found: list[Finding] = []
    rows: dict[str, int] = {}
    for marker_path in _all_markers(root)[1]:
        found.append(Finding("marker_damaged", marker_path, "ingest marker cannot be read",
                             "remove it and its input file's parts, so the next run re-ingests that file",
                             info={"marker": marker_path, "marker_data": None}))
    for marker_path, m in live_markers(root):
        run_dir = marker_path.rsplit("/", 2)[0]
        parts = [(f"{run_dir}/{p['path'].rsplit('/', 1)[-1]}", int(p["rows"])) for p in m["parts"]]
        for part, n in parts:
            problem = parquet_problem(part, n, deep)
            if problem is None:
                rows[part] = n
                continue
            kind = "raw_missing" if problem == "is missing" else "raw_damaged"
            found.append(Finding(kind, part, f"raw shard {problem}", f"re-ingest {m['file']} (the next run redoes it)",
                                 info={"marker": marker_path, "marker_data": m}))
    return found, rows


def _check_annotations(root: str, raw_rows: dict[str, int], deep: bool) -> list[Finding]:
    found: list[Finding] = []
    by_raw: dict[str, list[str]] = {}
    for ann in storage.glob(f"{root}/annotations/*/*/*/part-*.parquet"):
        rel = ann[len(f"{root}/annotations/"):].split("/", 1)[1]
        by_raw.setdefault(f"{root}/raw/{rel}", []).append(ann)
    for raw, anns in sorted(by_raw.items()):
        if raw not in raw_rows:
            continue  # no healthy raw shard: its annotations go with it (or are `curate gc`'s business)
        raw_ids: list[str] | None = None
        for ann in anns:
            problem = parquet_problem(ann, raw_rows[raw], deep)
            if problem is None:
                raw_ids = raw_ids if raw_ids is not None else _ids(raw)
                try:
                    ids = _ids(ann)
                except Exception as e:  # noqa: BLE001
                    ids, problem = [], f"cannot be read ({type(e).__name__})"
                if problem is None and ids != raw_ids:
                    first = next(i for i, (a, b) in enumerate(zip(ids, raw_ids)) if a != b)
                    problem = f"row {first} has id {ids[first]}, its raw shard {raw_ids[first]}"
            if problem is not None:
                found.append(Finding("annotation_damaged", ann, f"annotation file {problem}",
                                     "delete it; the next run recomputes it", info={"raw": raw}))
    return found


def _check_releases(root: str) -> list[Finding]:
    found: list[Finding] = []
    hint = ("restore it from a copy, or delete the folder and re-run the pipeline (the same inputs give the "
            "same shards)")
    for manifest_path in storage.glob(f"{root}/releases/*/*/manifest.json"):
        folder = storage.parent(manifest_path)
        if folder.rsplit("/", 1)[-1].startswith("."):
            continue  # an unpublished temporary: see tmp leftovers
        try:
            manifest = _read_json(manifest_path)
            shards = manifest["shards"]
        except (ValueError, KeyError, TypeError) as e:
            found.append(Finding("release_damaged", manifest_path, f"manifest cannot be read ({type(e).__name__})",
                                 hint, repairable=False))
            continue
        fs = storage.fs_and_path(folder)[0]
        for s in shards:
            path = f"{folder}/{s['file']}"
            problem = parquet_problem(path, s.get("rows"))
            if problem is None and s.get("bytes") is not None and fs.size(storage.fs_and_path(path)[1]) != s["bytes"]:
                problem = f"has {fs.size(storage.fs_and_path(path)[1])} bytes, the manifest says {s['bytes']}"
            if problem is None and s.get("sha256") and storage.file_sha256(path) != s["sha256"]:
                problem = "sha256 differs from the manifest"
            if problem is not None:
                found.append(Finding("release_damaged", path, f"release shard {problem}", hint, repairable=False))
    return found


def _check_catalog(root: str, deep: bool) -> list[Finding]:
    path = catalog_path(root)
    if not storage.exists(path):
        if runlog.read_runs(root) or storage.glob(f"{root}/raw/*/*/_done/*.json"):
            return [Finding("catalog_missing", path, "the catalog is missing but the lake has runs",
                            "rebuild it from the lake (`curate catalog rebuild`)")]
        return []
    cat = Catalog.of_lake(root)
    try:
        holes = catalog_holes(cat, root)
        killed = _running_runs(cat) if lock_holder(root) is None or _we_hold(root) else []
        if deep:
            _read_every_table(cat)
    except CatalogBusy as e:
        log.warning("catalog not checked: %s", e)
        return []
    except CatalogDamaged as e:
        return [Finding("catalog_damaged", path, str(e).split(". Rebuild")[0],
                        "rebuild it from the lake (`curate catalog rebuild`)")]
    found = []
    if any(holes.values()):
        what = ", ".join(f"{n} {k}" for k, n in holes.items() if n)
        found.append(Finding("catalog_incomplete", path, f"the lake holds {what} the catalog lacks",
                             "add them to the catalog from the lake", info=holes))
    found += [Finding("run_killed", runlog.run_path(root, r), "run is still marked running but no process holds the "
                      "lake lock (it was killed)", "mark it failed") for r in killed]
    return found


def _we_hold(root: str) -> bool:
    return held_lock(root) is not None


def _running_runs(cat: Catalog) -> list[str]:
    return [r[0] for r in cat.query("SELECT run_id FROM runs WHERE status='running' ORDER BY started_at")[1]]


def _read_every_table(cat: Catalog) -> None:
    tables = [r[0] for r in cat.query("SELECT table_name FROM duckdb_tables()")[1]]
    for t in tables:
        cat.query(f'SELECT count(*), sum(hash(t)) FROM "{t}" t')


def catalog_holes(cat: Catalog, root: str) -> dict[str, int]:
    """How many run records, journal entries, ingest markers and releases the catalog lacks."""
    with cat.connect(read_only=True) as con:
        has_journal = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name='_journal'").fetchone()
        runs = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
        applied = ({r[0] for r in con.execute("SELECT entry FROM _journal").fetchall()}
                   if has_journal and has_journal[0] else set())
        ingested = {tuple(r) for r in con.execute("SELECT source, fingerprint, ingest_run FROM ingested_files").fetchall()}
        released = {tuple(r) for r in con.execute(
            "SELECT name, version FROM releases r WHERE EXISTS (SELECT 1 FROM release_sources s "
            "WHERE s.name = r.name AND s.version = r.version)").fetchall()}
    markers = catalog_sync._markers(root)
    return {
        "runs": sum(r["run_id"] not in runs for r in runlog.read_runs(root)),
        "journal entries": sum(e not in applied for e in runlog.journal_entries(root)),
        "ingested files": sum((m["source"], m["fingerprint"], m["ingest_run"]) not in ingested for m in markers),
        "releases": sum((m["name"], m["version"]) not in released for _, m in catalog_sync.release_manifests(root)),
    }


def _is_tmp_name(name: str) -> bool:
    return name.startswith(".tmp") or ".tmp-" in name


def tmp_leftovers(root: str) -> list[tuple[str, float]]:
    """(path, newest mtime) of every temporary left by an atomic write, outermost only; the lock folder excluded."""
    fs, base = storage.fs_and_path(root)
    base = base.rstrip("/")
    units: dict[str, float] = {}
    try:
        entries = fs.find(base, withdirs=True, detail=True)
    except FileNotFoundError:
        return []
    for p, info in entries.items():
        rel = p[len(base) + 1:].split("/")
        if not rel or rel[0] == LOCK_DIR:
            continue
        k = next((i for i, part in enumerate(rel) if _is_tmp_name(part)), None)
        if k is None:
            continue
        unit = f"{base}/{'/'.join(rel[:k + 1])}"
        units[unit] = max(units.get(unit, 0.0), _mtime(info))
    proto = root.split("://", 1)[0] + "://" if "://" in root else ""
    return sorted((f"{proto}{u}" if proto and "://" not in u else u, t) for u, t in units.items())


def _mtime(info: dict[str, Any]) -> float:
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return float(stamp) if stamp is not None else 0.0


def _tmp_cutoff(root: str) -> float:
    """Temporaries older than this belong to no live writer: the live lock holder's start, else now."""
    mine = held_lock(root)
    rec = mine.record if mine is not None and mine.record is not None else lock_holder(root)
    if rec is None:
        return datetime.now(UTC).timestamp()
    return datetime.fromisoformat(rec.started_at).timestamp()


EXPORT_TMP_AGE_S = 24 * 3600


def _check_tmp(root: str) -> list[Finding]:
    """Temporaries no live writer owns. Exports are written without the lake lock (a trainer team
    may export while a run goes on), so theirs count only once a day old."""
    cutoff = _tmp_cutoff(root)
    export_cutoff = min(cutoff, datetime.now(UTC).timestamp() - EXPORT_TMP_AGE_S)
    return [Finding("tmp_leftover", p, "temporary file of an interrupted write", "delete it")
            for p, t in tmp_leftovers(root)
            if t < (export_cutoff if p.startswith(f"{root.rstrip('/')}/exports/") else cutoff)]


def check_lake(root: str, deep: bool = False, progress: Callable[[str], None] | None = None) -> list[Finding]:
    """Every problem of the lake at ``root`` (see the module docstring); an empty list when healthy."""
    say = progress or (lambda _msg: None)
    say("raw shards and ingest markers")
    found, raw_rows = _check_raw(root, deep)
    say(f"annotation files of {len(raw_rows)} raw shards")
    found += _check_annotations(root, raw_rows, deep)
    say("release shards against their manifests")
    found += _check_releases(root)
    say("the catalog")
    found += _check_catalog(root, deep)
    say("temporary leftovers")
    found += _check_tmp(root)
    return found


# --- repairs ---------------------------------------------------------------------------------------
def _rm(path: str, recursive: bool = False) -> bool:
    fs, p = storage.fs_and_path(path)
    try:
        fs.rm(p, recursive=recursive)
        return True
    except FileNotFoundError:
        return False


def input_unchanged(marker: dict[str, Any] | None) -> str | None:
    """None if the marker's input file still exists as ingested; else why not."""
    if marker is None:
        return None  # unknown file: the next run ingests whatever the config lists
    fs, p = storage.fs_and_path(marker["file"])
    try:
        size = fs.size(p)
    except FileNotFoundError:
        return f"its input file {marker['file']} no longer exists"
    if marker.get("bytes_read") and size != marker["bytes_read"]:
        return f"its input file {marker['file']} has changed since it was ingested ({size} bytes, was {marker['bytes_read']})"
    return None


def forget_ingest(root: str, catalog: Catalog | None, marker_path: str, marker: dict[str, Any] | None) -> list[str]:
    """Remove one input file's ingest from the lake (annotations of its parts, its quarantine file,
    its parts, then its marker) and from the catalog, so the next run ingests the file again."""
    run_dir = marker_path.rsplit("/", 2)[0]
    idx = marker_path.rsplit("/", 1)[-1].removesuffix(".json")
    rel_dir = run_dir[len(f"{root}/raw/"):]
    removed = []
    for ann in storage.glob(f"{root}/annotations/*/{rel_dir}/part-{idx}-*.parquet"):
        removed += [ann] if _rm(ann) else []
    if marker and marker.get("quarantine_file"):
        q = f"{root}/quarantine/{marker['quarantine_file'].split('/quarantine/', 1)[-1]}"
        removed += [q] if _rm(q) else []
    for part in storage.glob(f"{run_dir}/part-{idx}-*.parquet"):
        removed += [part] if _rm(part) else []
    if catalog is not None and marker is not None:
        _forget_in_catalog(catalog, run_dir, idx, marker)
    _rm(marker_path)
    return removed + [marker_path]


def _forget_in_catalog(catalog: Catalog, run_dir: str, idx: str, marker: dict[str, Any]) -> None:
    key = [marker["source"], marker["fingerprint"], marker["ingest_run"]]
    with catalog.transaction(), catalog.connect() as con:
        con.execute("DELETE FROM quarantine WHERE source=? AND file=? AND (stage <> 'ingest' OR run_id IN "
                    "(SELECT run_id FROM ingested_files WHERE source=? AND fingerprint=? AND ingest_run=?))",
                    [marker["source"], marker["file"], *key])
        con.execute("DELETE FROM ingested_files WHERE source=? AND fingerprint=? AND ingest_run=?", key)
        con.execute("DELETE FROM superseded_ingests WHERE source=? AND new_ingest_run=? AND new_file_index=?",
                    [marker["source"], marker["ingest_run"], int(idx)])
        con.execute("DELETE FROM shards WHERE path LIKE ? ESCAPE '\\'",
                    [_like_prefix(f"{run_dir}/part-{idx}-") + "%"])


def _like_prefix(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def repair_lake(root: str, findings: list[Finding], drop_lost: bool = False,
                found_by: str = "curate repair") -> tuple[list[str], list[Finding]]:
    """Fix ``findings`` (from ``check_lake``); hold the lake lock. Returns (what was done, what was not)."""
    done: list[str] = []
    left: list[Finding] = []
    kinds = {f.kind for f in findings}
    catalog = Catalog.of_lake(root)
    if catalog is not None and kinds & {"catalog_missing", "catalog_damaged"}:
        added = catalog_sync.rebuild_catalog(root)
        done.append(f"rebuilt the catalog from the lake ({_counts(added)})")
    markers: dict[str, dict[str, Any] | None] = {}
    for f in findings:
        if f.kind in ("raw_missing", "raw_damaged", "marker_damaged"):
            markers.setdefault(f.info["marker"], f.info.get("marker_data"))
    for marker_path, marker in markers.items():
        why = input_unchanged(marker)
        if why and not drop_lost:
            for f in findings:
                if f.info.get("marker") == marker_path:
                    f.repairable = False
                    f.action = (f"{why}, so its documents cannot be re-ingested; `curate repair --drop-lost` removes "
                                "them from the lake instead")
                    left.append(f)
            continue
        removed = forget_ingest(root, catalog, marker_path, marker)
        what = f"re-ingest {marker['file']}" if marker and not why else "drop its documents"
        done.append(f"removed the ingest of {marker_path} ({len(removed)} files) to {what} on the next run")
    for f in findings:
        if f.kind == "annotation_damaged":
            if _rm(f.path):
                done.append(f"deleted {f.path} (the next run recomputes it)")
        elif f.kind == "tmp_leftover":
            if _rm(f.path, recursive=True):
                done.append(f"deleted {f.path}")
        elif f.kind == "release_damaged":
            left.append(f)
    if catalog is not None and storage.exists(catalog.path):
        added = catalog_sync.sync_catalog(catalog, root)
        if any(added.values()):
            done.append(f"added to the catalog from the lake: {_counts(added)}")
        for run_id in catalog_sync.mark_killed_runs(catalog, None, found_by):
            done.append(f"marked run {run_id} failed (it was killed)")
    return done, left


def _counts(added: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in added.items() if n) or "nothing missing"


def heal_on_start(root: str, catalog: Catalog, run_id: str) -> list[str]:
    """The cheap healing every run does first, holding the lake lock (see the module docstring);
    returns what it did, one line each.

    Raises ``CatalogDamaged`` (the message says to rebuild) and ``LakeError`` for a raw shard
    that is gone with its input file."""
    done = []
    added = catalog_sync.sync_catalog(catalog, root)
    if any(added.values()):
        done.append(f"added to the catalog from the lake: {_counts(added)}")
    for killed in catalog_sync.mark_killed_runs(catalog, run_id, f"run {run_id}"):
        done.append(f"marked run {killed} failed (it was killed)")
    for f in _check_tmp(root):
        if _rm(f.path, recursive=True):
            done.append(f"removed the leftover temporary {f.path}")
    for marker_path, marker in _markers_with_missing_parts(root):
        why = input_unchanged(marker)
        if why:
            raise LakeError(f"raw shards listed by {marker_path} are gone and {why}; run `curate repair --drop-lost "
                            f"--lake {root}` to drop those documents, or restore the raw shards")
        forget_ingest(root, catalog, marker_path, marker)
        done.append(f"raw shards of {marker['file']} are gone: it is ingested again")
    return done


def _markers_with_missing_parts(root: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    listed: dict[str, set[str]] = {}
    for marker_path, m in live_markers(root):  # a damaged marker is left to `curate check` / `repair`
        run_dir = marker_path.rsplit("/", 2)[0]
        if run_dir not in listed:
            listed[run_dir] = {p.rsplit("/", 1)[-1] for p in storage.glob(f"{run_dir}/part-*.parquet")}
        if any(p["path"].rsplit("/", 1)[-1] not in listed[run_dir] for p in m.get("parts") or []):
            out.append((marker_path, m))
    return out
