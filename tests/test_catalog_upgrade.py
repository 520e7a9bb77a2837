"""A catalog written before ``stage_runs`` had its ``phase`` column keeps working: readers see the
column (its older rows as ``apply``) without altering the file, the next writer adds it, and
journal entries written before it existed replay as ``apply`` while fit rows stay ``fit``."""
from __future__ import annotations

from pathlib import Path

import duckdb

from warehouse import runlog
from warehouse.catalog import Catalog, now
from warehouse.catalog_sync import rebuild_catalog, record_stage_results
from warehouse.sql_door import readonly_query

# stage_runs as curate created it before the phase column (and a table that never changed).
OLD_SCHEMA = """
CREATE TABLE stage_runs(
  run_id VARCHAR, stage VARCHAR, stage_key VARCHAR, kind VARCHAR, version VARCHAR, source VARCHAR,
  shard VARCHAR, status VARCHAR, rows BIGINT, row_errors BIGINT, seconds DOUBLE, error VARCHAR,
  recorded_at TIMESTAMPTZ);
CREATE TABLE runs(run_id VARCHAR PRIMARY KEY, status VARCHAR);
INSERT INTO stage_runs VALUES
  ('run-0', 'length', 'length@1', 'length_filter', '1', 'web', 'raw/web/a.parquet', 'computed', 10, 0, 0.5, NULL, now()),
  ('run-0', 'length', 'length@1', 'length_filter', '1', 'web', 'raw/web/b.parquet', 'skipped', NULL, 0, 0.0, NULL, now());
"""


def _old_catalog(lake: Path) -> Path:
    lake.mkdir(parents=True)
    path = lake / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute(OLD_SCHEMA)
    con.close()
    return path


def _file_columns(path: Path) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'stage_runs' ORDER BY ordinal_position").fetchall()]
    finally:
        con.close()


def test_readers_of_an_old_catalog_see_phase_without_changing_the_file(tmp_path):
    lake = tmp_path / "lake"
    path = _old_catalog(lake)
    cat = Catalog(str(path))
    assert cat.query("SELECT shard, phase FROM stage_runs ORDER BY shard")[1] == [
        ("raw/web/a.parquet", "apply"), ("raw/web/b.parquet", "apply")]
    # The read-only door of `curate sql` too (its own connection).
    assert readonly_query(str(path), str(lake), "SELECT count(*) FROM stage_runs WHERE phase = 'apply'")[1] == [(2,)]
    assert "phase" not in _file_columns(path), "a reader must not write the catalog"


def test_the_next_writer_adds_the_column_and_fit_rows_keep_their_phase(tmp_path):
    lake = tmp_path / "lake"
    path = _old_catalog(lake)
    cat = Catalog(str(path))
    record_stage_results(cat, [{"run_id": "run-1", "stage": "dedup", "stage_key": "dedup@1", "kind": "exact_dedup",
                                "version": "1", "source": None, "shard": None, "status": "reused", "rows": None,
                                "row_errors": None, "seconds": 1.25, "error": None, "recorded_at": now(),
                                "phase": "fit"}])
    assert _file_columns(path)[-1] == "phase"
    assert cat.query("SELECT run_id, phase, status, count(shard), sum(seconds) FROM stage_runs "
                     "GROUP BY ALL ORDER BY ALL")[1] == [("run-0", "apply", "computed", 1, 0.5),
                                                         ("run-0", "apply", "skipped", 1, 0.0),
                                                         ("run-1", "fit", "reused", 0, 1.25)]
    Catalog(str(path)).init()  # opening again changes nothing
    assert _file_columns(path).count("phase") == 1


def test_journal_entries_from_before_the_column_replay_as_apply(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    old_row = {"run_id": "run-0", "stage": "length", "stage_key": "length@1", "kind": "length_filter", "version": "1",
               "source": "web", "shard": "raw/web/a.parquet", "status": "computed", "rows": 10, "row_errors": 0,
               "seconds": 0.5, "error": None, "recorded_at": now().isoformat()}
    runlog.write_journal(str(lake), "stage_runs", [old_row])  # as an older curate wrote it: no phase key
    cat = Catalog.of_lake(str(lake))
    record_stage_results(cat, [{**old_row, "run_id": "run-1", "shard": None, "source": None, "rows": None,
                                "status": "computed", "seconds": 2.0, "phase": "fit"}])
    rebuild_catalog(str(lake))
    assert Catalog.of_lake(str(lake)).query("SELECT run_id, phase, shard FROM stage_runs ORDER BY run_id")[1] == [
        ("run-0", "apply", "raw/web/a.parquet"), ("run-1", "fit", None)]
