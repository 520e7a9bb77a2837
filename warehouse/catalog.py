"""The DuckDB catalog (``<lake>/catalog.duckdb``): what ran, what it read and wrote, what it dropped.

Tables (all append-only except ``releases``' LATEST flag):

- ``runs``: one row per pipeline run (status, config hash, code version, release produced).
- ``ingested_files``: each input file version ingested (fingerprint = path + size + mtime/ETag),
  so a nightly run ingests only what is new.
- ``shards``: every raw shard with its rows and text bytes.
- ``stage_runs``: the wall time of every stage in every run, by ``phase``: ``apply`` rows, one per
  (run, stage, shard): computed / skipped / failed, rows, seconds; ``fit`` rows, one per run of a
  global stage (shard and source NULL): status ``computed`` (it fitted, or extended its model) or
  ``reused`` (a pinned model), ``failed`` with the error, and its seconds. Count shards with
  ``phase = 'apply'``; catalogs made before the column existed get it on opening, their rows as
  ``apply`` (warehouse/catalog_upgrade.py).
- ``artifacts``: each fitted artifact of a global stage, with its metrics.
- ``pins``: each time a global stage's pin moved (which artifact, why, trained on how many
  shards and rows; ``<lake>/pins/<stage-key>.json`` holds the current one).
- ``gc_removed``: what ``curate gc`` deleted (path, kind, bytes; ``<lake>/gc/<gc_id>.json`` too).
- ``bpb_matrix``: mean bits per byte per model and domain (or source) from ``perplexity`` stages.
- ``semantic_groups``, ``semantic_sources``: the groups ``semantic_dedup`` found (size, survivor,
  sources) and its counts per source, loaded from its artifact's ``catalog/*.parquet``.
- ``quarantine``: rows that could not be read or processed, with file, offset, error and raw bytes.
- ``releases``, ``release_sources``, ``drop_reasons``: each release, its per-source accounting
  (rows in = kept + dropped + quarantined; rows released = kept documents times their planned
  repeats) and its drops per stage and reason.
- ``release_mixture``, ``release_phases``: a planned release's weights and epochs per source and
  phase, and where each phase starts and ends (rows and tokens) in training order.
- ``stage_timings``: wall time of each stage per run and phase, one row each (``fit``, ``apply``
  in all shards; ``release`` ``write``; ``report`` ``build``): the per-run totals the report and
  the Prefect summary show, next to ``stage_runs``' per-shard rows.
- ``exports``: rows and tokens per source of each ``curate export`` (real trainer token counts
  when a tokenizer was given); the same facts are in the export's ``export.json``.
- ``release_gates``: every gate check of every release step, published or stopped (outcome pass,
  warn, fail or skipped, with the value, the threshold and a message).
- ``release_text``: per release, source and ``release.text`` step, what the step changed in the
  kept documents (documents changed, characters and lines in and removed).
- ``superseded_ingests``: ingests of a file replaced by a later ingest of it (changed content or
  reader config, or ``--reingest``); the lake records the same in the new ingest's marker
  (warehouse.supersede). A superseded ingest no longer counts anywhere.
- ``ablations``, ``ablation_evals``: proxy-model runs per (ablation, release, seed) and their
  metrics per step (``ablations.results``; loaded from ``<lake>/ablations/``).

- ``rewrite_outputs``: every candidate a ``rewrite`` stage made, kept or dropped (reason, reply),
  with its lineage (parent, prompt and version, model, sampling, seed, segment); loaded from the
  lake's ``raw/<derived source>/<run>/_outputs/*.parquet`` (warehouse.rewrites).

Views: ``documents`` (all raw shards of live ingests), ``release_shards`` (the shards of every
committed release), and one ``ann_<stage>`` view per configured stage over its annotation files (of live
ingests too), with the document's ``source`` (from the file's path), so a score distribution per source
needs no join; ``rewrite_summary`` and ``rewrite_drops`` over ``rewrite_outputs`` (warehouse.rewrites).

Only the flow's main process writes, under the lake lock (warehouse/lock.py); connections
are short-lived, and both sides wait out the other's file lock (warehouse/catalog_access.py),
so ``curate stats`` can read during a run. Everything here is also in the lake: ingest markers,
quarantine files and release manifests hold their tables' facts, and run records plus a
journal of the other inserts are written to the lake before the catalog (warehouse/runlog.py),
so ``curate catalog rebuild`` restores a lost catalog (warehouse/catalog_sync.py).
"""
from __future__ import annotations

import contextlib
import json
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Iterator

import duckdb

from engines import storage
from engines.storage_duckdb import catalog_path, register_lake
from warehouse import runlog
from warehouse.catalog_access import CatalogDamaged, open_catalog
from warehouse.catalog_upgrade import upgrade
from warehouse.releasing.publish import published_shards
from warehouse.releasing.records import gate_rows, text_rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
  run_id VARCHAR PRIMARY KEY, pipeline VARCHAR, config_path VARCHAR, config_hash VARCHAR,
  code_version VARCHAR, prefect_flow_run VARCHAR, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
  status VARCHAR, release_name VARCHAR, release_version VARCHAR, message VARCHAR);
CREATE TABLE IF NOT EXISTS ingested_files(
  source VARCHAR, path VARCHAR, fingerprint VARCHAR, size BIGINT, ingest_run VARCHAR, run_id VARCHAR,
  rows_in BIGINT, rows_written BIGINT, rows_quarantined BIGINT, seconds DOUBLE, ingested_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS shards(
  path VARCHAR PRIMARY KEY, source VARCHAR, ingest_run VARCHAR, input_file VARCHAR, rows BIGINT,
  text_bytes BIGINT, run_id VARCHAR, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS stage_runs(
  run_id VARCHAR, stage VARCHAR, stage_key VARCHAR, kind VARCHAR, version VARCHAR, source VARCHAR,
  shard VARCHAR, status VARCHAR, rows BIGINT, row_errors BIGINT, seconds DOUBLE, error VARCHAR,
  recorded_at TIMESTAMPTZ, phase VARCHAR DEFAULT 'apply');
CREATE TABLE IF NOT EXISTS quarantine(
  run_id VARCHAR, source VARCHAR, stage VARCHAR, file VARCHAR, "offset" BIGINT, rows BIGINT,
  error VARCHAR, raw BLOB, recorded_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS artifacts(
  stage VARCHAR, stage_key VARCHAR, path VARCHAR, run_id VARCHAR, metrics JSON, created_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS releases(
  name VARCHAR, version VARCHAR, parent VARCHAR, run_id VARCHAR, created_at TIMESTAMPTZ,
  config_hash VARCHAR, code_version VARCHAR, seed BIGINT, selection VARCHAR, order_by VARCHAR,
  rows BIGINT, tokens BIGINT, shards BIGINT, bytes BIGINT, content_hash VARCHAR, path VARCHAR,
  PRIMARY KEY(name, version));
CREATE TABLE IF NOT EXISTS release_sources(
  name VARCHAR, version VARCHAR, source VARCHAR, rows_in BIGINT, rows_kept BIGINT,
  rows_dropped BIGINT, rows_quarantined BIGINT, tokens_kept BIGINT, rows_released BIGINT,
  tokens_released BIGINT);
CREATE TABLE IF NOT EXISTS release_mixture(
  name VARCHAR, version VARCHAR, method VARCHAR, phase VARCHAR, source VARCHAR, weight DOUBLE, epochs DOUBLE,
  tokens_available DOUBLE, rows_kept BIGINT, tokens_released BIGINT);
CREATE TABLE IF NOT EXISTS release_phases(
  name VARCHAR, version VARCHAR, phase VARCHAR, start_row BIGINT, end_row BIGINT, start_token BIGINT,
  end_token BIGINT);
CREATE TABLE IF NOT EXISTS bpb_matrix(
  run_id VARCHAR, stage VARCHAR, stage_key VARCHAR, model VARCHAR, grp VARCHAR, bpb DOUBLE, docs BIGINT);
CREATE TABLE IF NOT EXISTS semantic_groups(
  stage VARCHAR, stage_key VARCHAR, sem_group UBIGINT, sem_group_size BIGINT, survivor_id VARCHAR,
  survivor_source VARCHAR, sources VARCHAR[]);
CREATE TABLE IF NOT EXISTS semantic_sources(
  stage VARCHAR, stage_key VARCHAR, source VARCHAR, documents BIGINT, embedded BIGINT, "groups" BIGINT,
  in_groups BIGINT, duplicates BIGINT, d4_pruned BIGINT);
CREATE TABLE IF NOT EXISTS drop_reasons(
  name VARCHAR, version VARCHAR, source VARCHAR, stage VARCHAR, reason VARCHAR, rows BIGINT);
CREATE TABLE IF NOT EXISTS stage_timings(
  run_id VARCHAR, stage VARCHAR, stage_key VARCHAR, kind VARCHAR, phase VARCHAR, status VARCHAR, shards BIGINT,
  rows BIGINT, seconds DOUBLE, started_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS exports(
  name VARCHAR, version VARCHAR, format VARCHAR, out_dir VARCHAR, source VARCHAR, rows BIGINT, tokens BIGINT,
  token_source VARCHAR, tokenizer VARCHAR, tokenizer_sha256 VARCHAR, exported_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS release_gates(
  name VARCHAR, version VARCHAR, run_id VARCHAR, gate VARCHAR, outcome VARCHAR, source VARCHAR, rule VARCHAR,
  value DOUBLE, threshold DOUBLE, message VARCHAR, published BOOLEAN, accepted BOOLEAN, recorded_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS release_text(
  name VARCHAR, version VARCHAR, source VARCHAR, step BIGINT, stage VARCHAR, column_name VARCHAR, docs BIGINT,
  docs_changed BIGINT, chars_in BIGINT, chars_removed BIGINT, lines_in BIGINT, lines_removed BIGINT);
CREATE TABLE IF NOT EXISTS rewrite_outputs(
  id VARCHAR, status VARCHAR, reason VARCHAR, source VARCHAR, parent_id VARCHAR, parent_source VARCHAR,
  parent_shard VARCHAR, parent_row BIGINT, stage VARCHAR, route VARCHAR, method VARCHAR, family VARCHAR,
  prompt_id VARCHAR, prompt_version VARCHAR, model VARCHAR, backend VARCHAR, sampling VARCHAR, seed BIGINT,
  segment_index INTEGER, segment_start BIGINT, segment_end BIGINT, prompt_tokens BIGINT, completion_tokens BIGINT,
  words BIGINT, finish_reason VARCHAR, cached BOOLEAN, detail VARCHAR, reply VARCHAR, ingest_run VARCHAR,
  file_index BIGINT, run_id VARCHAR, recorded_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS superseded_ingests(
  source VARCHAR, path VARCHAR, old_ingest_run VARCHAR, old_file_index BIGINT, new_ingest_run VARCHAR,
  new_file_index BIGINT, run_id VARCHAR, recorded_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS _journal(entry VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS pins(
  stage VARCHAR, kind VARCHAR, policy VARCHAR, stage_key VARCHAR, fit_key VARCHAR, artifact VARCHAR,
  pinned_at TIMESTAMPTZ, run_id VARCHAR, reason VARCHAR, shards BIGINT, rows BIGINT, bytes BIGINT,
  previous_artifact VARCHAR);
CREATE TABLE IF NOT EXISTS gc_removed(
  gc_id VARCHAR, path VARCHAR, what VARCHAR, bytes BIGINT, removed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS ablations(
  ablation_id VARCHAR, created_at TIMESTAMPTZ, release VARCHAR, seed BIGINT, run_key VARCHAR, config_hash VARCHAR,
  model VARCHAR, params BIGINT, params_non_embedding BIGINT, tokenizer_sha256 VARCHAR, export_format VARCHAR,
  budget_tokens BIGINT, tokens_seen BIGINT, steps BIGINT, release_tokens BIGINT, epochs DOUBLE,
  decontaminated BOOLEAN, seconds DOUBLE, path VARCHAR);
CREATE TABLE IF NOT EXISTS ablation_evals(
  ablation_id VARCHAR, release VARCHAR, seed BIGINT, run_key VARCHAR, step BIGINT, tokens_seen BIGINT,
  metric VARCHAR, value DOUBLE);
"""
# Rows of ingests that a later ingest superseded are left out of the `documents` and `ann_<stage>`
# views. Raw and annotation files both end in <source>/<ingest run>/part-<file index>-<k>.parquet.
_LIVE = (r" d WHERE NOT EXISTS (SELECT 1 FROM superseded_ingests s WHERE s.source || '/' || s.old_ingest_run || '/' "
         r"|| s.old_file_index = regexp_replace(d.filename, '^.*/([^/]+/[^/]+)/part-0*([0-9]+)-[0-9]+\.parquet$', '\1/\2'))")


class _Held(threading.local):
    """Per thread: catalog file -> the connection ``Catalog.held``/``transaction`` hold on it, and
    the files with a transaction open."""

    def __init__(self) -> None:
        self.cons: dict[str, duckdb.DuckDBPyConnection] = {}
        self.in_tx: set[str] = set()


_HELD = _Held()


def now() -> datetime:
    return datetime.now(UTC)


class Catalog:
    """The catalog of the lake around ``path`` (``<lake>/catalog.duckdb``).

    ``journal=False`` skips writing lake records (used when replaying them into a new catalog).
    ``lake_root``: the lake it describes, when the file is not inside it (a remote lake's catalog
    is a local file elsewhere: engines/storage_duckdb.py)."""

    def __init__(self, path: str, journal: bool = True, lake_root: str | None = None):
        self.path = path
        self.lake_root = lake_root or storage.parent(path)
        self.journal = journal

    @classmethod
    def of_lake(cls, lake_root: str, journal: bool = True) -> Catalog:
        """The catalog of the lake at ``lake_root`` (local file; for a remote lake, on this machine)."""
        return cls(catalog_path(lake_root), journal=journal, lake_root=lake_root)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the catalog, closed on exit; inside ``transaction()`` or ``held()`` (in
        this thread, on any ``Catalog`` of the same file) the one they hold."""
        held = _HELD.cons.get(self.path)
        if held is not None:  # inside transaction() or held(): every statement joins that connection
            yield held
            return
        if read_only and not storage.exists(self.path):
            raise FileNotFoundError(f"no catalog at {self.path}: run `curate run PIPELINE.yaml` first")
        con = open_catalog(self.path, read_only)
        try:
            register_lake(con, self.lake_root)
            if not read_only:
                con.execute(SCHEMA)
            upgrade(con, read_only)  # a catalog an older curate wrote: today's columns
            yield con
        except duckdb.Error as e:
            if "Corrupt database file" in str(e) or (self.path in str(e) and "read enough bytes" in str(e)):
                raise CatalogDamaged(f"the catalog {self.path} is damaged ({str(e).splitlines()[0][:160]}). Rebuild "
                                     f"it from the lake with `curate catalog rebuild --lake {self.lake_root}`") from None
            raise
        finally:
            con.close()

    @contextmanager
    def held(self, read_only: bool = False) -> Iterator[None]:
        """One connection for a burst of catalog work (a step of a run): every ``connect``/
        ``query``/``insert`` in this thread on this catalog file reuses it instead of opening the
        file again (~30 ms of CPU each: connect, schema, upgrade check, lake registration).
        Statements still commit one by one, and ``transaction()`` inside still groups its writes.
        The file stays locked while held (``read_only``: shared, for queries only), so hold it for
        a step, not a run: a reader (``curate stats``) waits until a writer releases it
        (warehouse/catalog_access.py). Inside another hold of the same file: that one."""
        if self.path in _HELD.cons:
            yield
            return
        with self.connect(read_only) as con:
            _HELD.cons[self.path] = con
            try:
                yield
            finally:
                del _HELD.cons[self.path]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them reach the catalog, or none (a kill mid-way leaves no half record)."""
        if self.path in _HELD.in_tx:
            yield
            return
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            outer = _HELD.cons.get(self.path)
            _HELD.cons[self.path] = con
            _HELD.in_tx.add(self.path)
            try:
                yield
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                _HELD.in_tx.discard(self.path)
                if outer is None:
                    del _HELD.cons[self.path]

    def init(self) -> None:
        with self.connect():
            pass

    # --- writes -----------------------------------------------------------------------------
    def insert(self, table: str, rows: list[dict[str, Any]], replace: dict[str, Any] | None = None,
               from_lake: bool = False) -> None:
        """Append rows (after deleting the rows matching ``replace``, if given).

        Rows of tables the lake does not otherwise hold are first written to the lake's
        journal (warehouse/runlog.py), so the catalog never knows what the lake does not.
        ``from_lake``: these rows are derived from a lake file (a manifest), so no journal entry."""
        if not rows and not replace:
            return
        entry = None
        if self.journal and not from_lake and table not in runlog.LAKE_DERIVED:
            entry = runlog.write_journal(self.lake_root, table, rows, replace)
        with self.transaction(), self.connect() as con:
            self.apply_rows(con, table, rows, replace)
            if entry:
                con.execute("INSERT INTO _journal VALUES (?, ?)", [entry, now()])

    @staticmethod
    def apply_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]],
                   replace: dict[str, Any] | None = None) -> None:
        if replace:
            con.execute(f"DELETE FROM {_q(table)} WHERE " + " AND ".join(f"{_q(k)} = ?" for k in replace),
                        list(replace.values()))
        if rows:
            cols = list(rows[0])
            sql = f"INSERT INTO {_q(table)} ({', '.join(_q(c) for c in cols)}) VALUES ({', '.join('?' for _ in cols)})"
            con.executemany(sql, [[r.get(c) for c in cols] for r in rows])

    def start_run(self, run_id: str, pipeline: str, config_path: str, config_hash: str, code_version: str,
                  prefect_flow_run: str | None) -> None:
        row = {"run_id": run_id, "pipeline": pipeline, "config_path": config_path, "config_hash": config_hash,
               "code_version": code_version, "prefect_flow_run": prefect_flow_run, "started_at": now(),
               "status": "running"}
        runlog.write_run(self.lake_root, row)
        self.insert("runs", [row])

    def finish_run(self, run_id: str, status: str, release: tuple[str, str] | None = None, message: str = "") -> None:
        changes = {"finished_at": now(), "status": status, "release_name": release[0] if release else None,
                   "release_version": release[1] if release else None, "message": message}
        runlog.update_run(self.lake_root, run_id, changes)
        with self.connect() as con:
            con.execute("UPDATE runs SET " + ", ".join(f"{k}=?" for k in changes) + " WHERE run_id=?",
                        [*changes.values(), run_id])

    def load_quarantine_file(self, path: str, recorded_at: datetime | str | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO quarantine SELECT run_id, source, stage, file, \"offset\", rows, error, raw, ? "
                "FROM read_parquet(?)", [recorded_at or now(), path])

    def load_stage_errors(self, run_id: str, source: str, stage: str, ann_path: str, raw_path: str,
                          recorded_at: datetime | str | None = None) -> None:
        """Quarantine entries for rows a stage could not process (their text stays in the raw shard)."""
        with self.connect() as con:
            con.execute(
                "INSERT INTO quarantine SELECT ?, ?, ?, r.src_file, r.src_offset, 1, a._error, NULL, ? "
                "FROM read_parquet(?, file_row_number=true) a "
                "JOIN read_parquet(?, file_row_number=true) r USING (file_row_number) WHERE a._error IS NOT NULL",
                [run_id, source, stage, recorded_at or now(), ann_path, raw_path])

    def record_bpb_matrix(self, run_id: str, stage: str, key: str, lake_root: str, models: list[str],
                          group_by: str) -> None:
        """Mean bits per byte per (model, domain or source) of a perplexity stage's annotations."""
        ann = f"{lake_root}/annotations/{key}/*/*/part-*.parquet"
        if not storage.glob(ann):
            return
        grp = "coalesce(r.domain, r.source)" if group_by == "domain" else "r.source"
        rows: list[dict[str, Any]] = []
        with contextlib.closing(duckdb.connect()) as con:  # computed apart: the catalog stays free meanwhile
            for m in models:
                got = con.execute(
                    f"SELECT {grp}, avg(a.\"bpb__{m}\"), count(a.\"bpb__{m}\") "
                    f"FROM read_parquet('{_lit(ann)}', filename=true, file_row_number=true) a "
                    f"JOIN read_parquet('{_lit(lake_root)}/raw/*/*/part-*.parquet', filename=true, file_row_number=true) r "
                    f"ON r.filename = replace(a.filename, '/annotations/{_lit(key)}/', '/raw/') "
                    "AND r.file_row_number = a.file_row_number "
                    f"WHERE a.\"bpb__{m}\" IS NOT NULL GROUP BY {grp} ORDER BY 1").fetchall()
                rows += [{"run_id": run_id, "stage": stage, "stage_key": key, "model": m, "grp": g, "bpb": b, "docs": n}
                         for g, b, n in got]
        self.insert("bpb_matrix", rows, replace={"stage_key": key})

    def load_artifact_tables(self, stage: str, key: str, artifact_dir: str) -> None:
        """Rows a global stage's fit left in ``<artifact>/catalog/<table>.parquet`` go into the
        catalog table of that name (one of SCHEMA's), tagged with the stage and its key; the
        files stay in the lake, so the catalog can be rebuilt from them."""
        files = storage.glob(f"{artifact_dir}/catalog/*.parquet")
        if not files:
            return
        with self.connect() as con:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            for path in files:
                table = path.rsplit("/", 1)[-1][:-len(".parquet")]
                if table not in tables:
                    raise ValueError(f"{path}: no catalog table {table!r}")
                con.execute(f"DELETE FROM {_q(table)} WHERE stage_key = ?", [key])
                con.execute(f"INSERT INTO {_q(table)} BY NAME SELECT ? AS stage, ? AS stage_key, * "
                            f"FROM read_parquet('{_lit(path)}')", [stage, key])

    def ingested_fingerprints(self, source: str) -> set[str]:
        return {fp for fp, _ in self.ingested_keys(source)}

    def ingested_keys(self, source: str) -> set[tuple[str, str]]:
        """(fingerprint, ingest_run) of every ingest recorded for a source (a re-ingest of an
        unchanged file has the same fingerprint but another ingest run)."""
        with self.connect() as con:
            return {(r[0], r[1]) for r in con.execute(
                "SELECT fingerprint, ingest_run FROM ingested_files WHERE source=?", [source]).fetchall()}

    def release_exists(self, name: str, version: str) -> bool:
        with self.connect() as con:
            row = con.execute("SELECT count(*) FROM releases WHERE name=? AND version=?", [name, version]).fetchone()
            return bool(row and row[0])

    def record_release(self, manifest: dict[str, Any], run_id: str, path: str) -> None:
        """Record a release from its manifest, all tables in one transaction."""
        with self.transaction():
            self._record_release(manifest, run_id, path)

    def _record_release(self, manifest: dict[str, Any], run_id: str, path: str) -> None:
        name, version = manifest["name"], manifest["version"]
        if self.release_exists(name, version):
            return
        t = manifest["totals"]
        self.insert("releases", [{
            "name": name, "version": version, "parent": manifest.get("parent"), "run_id": run_id,
            "created_at": manifest["created_at"], "config_hash": manifest["config_hash"],
            "code_version": manifest["code_version"], "seed": manifest["seed"], "selection": manifest["selection"],
            "order_by": manifest["order"], "rows": t["rows"], "tokens": t["tokens"], "shards": len(manifest["shards"]),
            "bytes": t["bytes"], "content_hash": manifest["content_hash"], "path": path}])
        self.insert("release_sources", [
            {"name": name, "version": version, "source": s, "rows_in": v["rows_in"], "rows_kept": v["rows_kept"],
             "rows_dropped": v["rows_dropped"], "rows_quarantined": v["rows_quarantined"], "tokens_kept": v["tokens_kept"],
             "rows_released": manifest.get("released", {}).get(s, {}).get("rows", v["rows_kept"]),
             "tokens_released": manifest.get("released", {}).get(s, {}).get("tokens", v["tokens_kept"])}
            for s, v in manifest["sources"].items()])
        self.insert("drop_reasons", [
            {"name": name, "version": version, **d} for d in manifest["drop_reasons"]])
        mix = manifest.get("mixture")
        if mix:
            released = {s: v["tokens"] for s, v in manifest.get("released", {}).items()}
            self.insert("release_mixture", [
                {"name": name, "version": version, "method": mix["method"], "phase": ph["name"], "source": src,
                 "weight": w, "epochs": mix["epochs"].get(src), "tokens_available": mix["tokens"].get(src),
                 "rows_kept": manifest["sources"].get(src, {}).get("rows_kept"), "tokens_released": released.get(src)}
                for ph in mix["phases"] for src, w in ph["weights"].items()])
        # Both come from the manifest (a rebuild derives the same rows, recorded when it was created).
        self.insert("release_gates", gate_rows(manifest, run_id, manifest["created_at"]), from_lake=True)
        self.insert("release_text", text_rows(manifest), from_lake=True)
        phases = manifest.get("phases") or []
        self.insert("release_phases", [
            {"name": name, "version": version, "phase": p.get("phase") or p.get("name"), "start_row": p.get("start_row"),
             "end_row": p.get("end_row"), "start_token": p.get("start_token"), "end_token": p.get("end_token")}
            for p in phases])

    def record_rejected(self, record: dict[str, Any], run_id: str) -> None:
        """The gate checks of a release its gates stopped (it has no other catalog rows)."""
        self.insert("release_gates", gate_rows(record, run_id, now()))

    def refresh_views(self, lake_root: str, stage_keys: dict[str, str]) -> None:
        """(Re)create the views over Parquet files; a view is made only when files exist."""
        with self.connect() as con:
            def view(name: str, pattern: str, extra: str = "", where: str = "") -> None:
                if storage.glob(pattern):
                    con.execute(f"CREATE OR REPLACE VIEW {_q(name)} AS SELECT *{extra} FROM "
                                f"read_parquet('{_lit(pattern)}', union_by_name=true, filename=true){where}")
            view("documents", f"{lake_root}/raw/*/*/part-*.parquet", where=_LIVE)
            shards = published_shards(lake_root)  # committed releases only, never a half-written one
            if shards:
                listing = ", ".join(f"'{_lit(p)}'" for p in shards)
                con.execute("CREATE OR REPLACE VIEW release_shards AS SELECT * FROM "
                            f"read_parquet([{listing}], union_by_name=true, filename=true)")
            for stage, key in stage_keys.items():  # source from the path: annotations/<key>/<source>/...
                view(f"ann_{stage}", f"{lake_root}/annotations/{key}/*/*/part-*.parquet", where=_LIVE,
                     extra=r", regexp_extract(filename, '/annotations/[^/]+/([^/]+)/[^/]+/[^/]+$', 1) AS source")
            from warehouse.rewrites import create_views
            create_views(con)  # rewrite_summary, rewrite_drops (issue 15)

    # --- reads ------------------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        with self.connect(read_only=True) as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return s.replace("'", "''")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
