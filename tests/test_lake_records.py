"""The pieces that make the catalog rebuildable and the lake healable, without a pipeline run:
the journal and run records, filling catalog holes from the lake, killed runs, stale temporaries,
damaged outputs redone, and the catalog's file lock waited out (DuckDB 2.0 lets one process
write or several read, never both)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engines import storage
from tests.conftest import REPO
from tests.helpers import make_lake, real_texts
from warehouse import runlog
from warehouse.catalog import Catalog, now
from warehouse.catalog_access import CatalogBusy, CatalogDamaged, open_catalog
from warehouse.catalog_sync import mark_killed_runs, rebuild_catalog, record_stage_results, sync_catalog
from warehouse.health import check_lake, heal_on_start, tmp_leftovers
from warehouse.lock import lake_lock


@pytest.fixture
def lake(tmp_path, corpora) -> Path:
    root = tmp_path / "lake"
    texts = real_texts(corpora, "wiki_en", 20)
    make_lake(root, {"wiki_en": [texts[:10], texts[10:]], "wiki_fr": [real_texts(corpora, "wiki_fr", 5)]})
    return root


def _rows(cat: Catalog, sql: str) -> list[tuple]:
    return cat.query(sql)[1]


def test_inserts_are_journaled_in_the_lake_before_the_catalog(lake):
    cat = Catalog(str(lake / "catalog.duckdb"))
    cat.start_run("run-1", "p", "p.yaml", "h", "0", None)
    record_stage_results(cat, [{"run_id": "run-1", "stage": "length", "stage_key": "length@1-x", "kind": "length_filter",
                                "version": "1", "source": "wiki_en", "shard": "s", "status": "computed", "rows": 10,
                                "row_errors": 0, "seconds": 0.5, "error": None, "recorded_at": now()}])
    cat.insert("bpb_matrix", [{"run_id": "run-1", "stage": "ppl", "stage_key": "k", "model": "m", "grp": "g",
                               "bpb": 1.0, "docs": 3}], replace={"stage_key": "k"})
    cat.insert("bpb_matrix", [{"run_id": "run-1", "stage": "ppl", "stage_key": "k", "model": "m", "grp": "g",
                               "bpb": 0.9, "docs": 4}], replace={"stage_key": "k"})
    cat.finish_run("run-1", "completed", ("demo", "v1"))
    entries = runlog.journal_entries(str(lake))
    assert [runlog.read_journal(str(lake), e)["table"] for e in entries] == ["stage_runs", "bpb_matrix", "bpb_matrix"]
    assert runlog.read_run(str(lake), "run-1")["status"] == "completed"
    assert _rows(cat, "SELECT count(*) FROM _journal") == [(3,)]
    # A catalog rebuilt from the lake alone has the same rows (the replace semantics included).
    before = {t: sorted(_rows(cat, f"SELECT * FROM {t}"), key=repr) for t in ("runs", "stage_runs", "bpb_matrix")}
    os.remove(lake / "catalog.duckdb")
    rebuild_catalog(str(lake))
    after = {t: sorted(_rows(cat, f"SELECT * FROM {t}"), key=repr) for t in ("runs", "stage_runs", "bpb_matrix")}
    assert after == before and after["bpb_matrix"][0][-2:] == (0.9, 4)


def test_sync_fills_what_a_killed_run_never_recorded(lake):
    cat = Catalog(str(lake / "catalog.duckdb"))
    cat.start_run("run-1", "p", "p.yaml", "h", "0", None)
    # The markers exist (ingest finished) but nothing reached the catalog: the run was killed.
    added = sync_catalog(cat, str(lake))
    assert added["ingested_files"] == 2
    assert _rows(cat, "SELECT source, rows_in, run_id FROM ingested_files ORDER BY 1") == [
        ("wiki_en", 20, None), ("wiki_fr", 5, None)]  # ingested (2026-01-01) before run-1 started: no run known
    assert _rows(cat, "SELECT count(*), sum(rows) FROM shards") == [(3, 25)]
    # A release whose manifest exists but whose rows are half in the catalog is recorded again, whole.
    rel = lake / "releases" / "demo" / "v1"
    rel.mkdir(parents=True)
    manifest = {"name": "demo", "version": "v1", "parent": None, "created_at": "2026-01-02T00:00:00+00:00",
                "run_id": "run-1", "config_hash": "c", "code_version": "0", "seed": 0, "selection": "true",
                "order": "ingest", "content_hash": "x", "totals": {"rows": 25, "tokens": 100, "bytes": 9},
                "sources": {s: {"rows_in": n, "rows_kept": n, "rows_dropped": 0, "rows_quarantined": 0,
                                "tokens_kept": 1} for s, n in (("wiki_en", 20), ("wiki_fr", 5))},
                "drop_reasons": [], "shards": []}
    (rel / "manifest.json").write_text(json.dumps(manifest))
    cat.insert("releases", [{"name": "demo", "version": "v1", "run_id": "run-1"}])  # the half record
    assert sync_catalog(cat, str(lake))["releases"] == 1
    assert _rows(cat, "SELECT count(*) FROM releases") == [(1,)]
    assert _rows(cat, "SELECT count(*) FROM release_sources") == [(2,)]
    assert sync_catalog(cat, str(lake)) == {"runs": 0, "journal": 0, "ingested_files": 0, "releases": 0}
    assert [f for f in check_lake(str(lake)) if f.kind.startswith("catalog")] == []


def test_killed_runs_are_marked_failed_in_catalog_and_lake(lake):
    cat = Catalog(str(lake / "catalog.duckdb"))
    cat.start_run("run-old", "p", "p.yaml", "h", "0", None)
    cat.start_run("run-now", "p", "p.yaml", "h", "0", None)
    assert [f.kind for f in check_lake(str(lake))].count("run_killed") == 2  # no lock holder: both are dead
    with lake_lock(str(lake), "run", run_id="run-now"):
        done = heal_on_start(str(lake), cat, "run-now")
    assert any("run-old" in d for d in done)
    assert _rows(cat, "SELECT run_id, status FROM runs ORDER BY 1") == [("run-now", "running"), ("run-old", "failed")]
    assert runlog.read_run(str(lake), "run-old")["message"].startswith("killed")
    assert mark_killed_runs(cat, "run-now", "test") == []


def test_stale_temporaries_found_and_removed_but_not_the_lock_or_a_fresh_export(lake):
    old = time.time() - 3 * 24 * 3600
    leftovers = [lake / "raw" / "wiki_en" / ".tmp-123-abcd1234-part-00000-000.parquet",
                 lake / "artifacts" / "dedup@1-abc.tmp-9f8e7d" / "model.bin",
                 lake / "releases" / "demo" / ".tmp-2026-01-01-abcdef" / "shard-000000.parquet",
                 lake / "exports" / "demo" / "v1" / ".hf.tmp-777" / "old.parquet"]
    keep = [lake / "_lock" / ".tmp-1-2-gen-000000000000.json", lake / "exports" / "demo" / "v2" / ".hf.tmp-778" / "x"]
    for p in leftovers + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    os.utime(leftovers[-1], (old, old))
    os.utime(leftovers[-1].parent, (old, old))
    units = {p for p, _ in tmp_leftovers(str(lake))}
    assert str(lake / "artifacts" / "dedup@1-abc.tmp-9f8e7d") in units
    found = {f.path for f in check_lake(str(lake)) if f.kind == "tmp_leftover"}
    assert found == {str(leftovers[0]), str(leftovers[1].parent), str(leftovers[2].parent), str(leftovers[3].parent)}
    cat = Catalog(str(lake / "catalog.duckdb"))
    with lake_lock(str(lake), "run", run_id="run-x"):
        heal_on_start(str(lake), cat, "run-x")
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)


def test_a_damaged_output_is_redone_not_fatal(tmp_path):
    path = tmp_path / "ann.parquet"
    pq.write_table(pa.table({"id": ["a", "b"]}), path)
    assert storage.complete_parquet_rows(str(path)) == 2
    path.write_bytes(path.read_bytes()[:-30])  # truncated: footer gone
    assert storage.complete_parquet_rows(str(path)) is None and not path.exists()
    assert storage.complete_parquet_rows(str(tmp_path / "missing.parquet")) is None


def test_garbage_catalog_gets_a_message_that_says_rebuild(lake):
    (lake / "catalog.duckdb").write_bytes(b"not a database" * 100)
    with pytest.raises(CatalogDamaged, match="curate catalog rebuild"):
        Catalog(str(lake / "catalog.duckdb")).query("SELECT 1")
    assert [f.kind for f in check_lake(str(lake))] == ["catalog_damaged"]


def test_readers_and_the_writer_wait_out_each_other(lake):
    """DuckDB refuses a second process while one writes; both sides retry instead of failing."""
    path = str(lake / "catalog.duckdb")
    Catalog(path).init()
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({path!r}); "
                               "print('open', flush=True); time.sleep(2); c.close(); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(CatalogBusy, match="busy"):
            open_catalog(path, read_only=True, wait_s=0.3)
        t0 = time.monotonic()
        con = open_catalog(path, read_only=True, wait_s=30)  # gets in once the writer lets go
        con.close()
        assert time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait()
    reader = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({path!r}, read_only=True); "
                               "print('open', flush=True); time.sleep(2); c.close(); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert reader.stdout.readline().strip() == "open"
        Catalog(path).insert("artifacts", [{"stage": "s", "stage_key": "k", "run_id": "r", "created_at": now()}])
    finally:
        reader.kill()
        reader.wait()
    con = duckdb.connect(path, read_only=True)
    assert con.execute("SELECT count(*) FROM artifacts").fetchone() == (1,)
    con.close()
