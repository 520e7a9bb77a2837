"""`curate sql` is a read-only door: every escape of the issue (COPY, reads of arbitrary files,
ATTACH + USE + DROP, INSTALL/LOAD, SET, PRAGMA, DDL/DML) is refused with one clear line, while the
catalog tables and the Parquet views over the lake still answer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.helpers import make_lake, real_texts
from warehouse.catalog import Catalog, now
from warehouse.sql_door import QueryRefused, readonly_query, sandboxed_connection


@pytest.fixture(scope="module")
def lake(tmp_path_factory, corpora) -> Path:
    root = tmp_path_factory.mktemp("door") / "lake"
    texts = real_texts(corpora, "wiki_en", 30)
    shards = make_lake(root, {"wiki_en": [texts[:15], texts[15:]]})
    rel = root / "releases" / "demo" / "v1"
    rel.mkdir(parents=True)
    pq.write_table(pq.read_table(shards[0]), rel / "shard-000000.parquet")
    # The manifest is the commit record: release_shards lists committed releases only.
    (rel / "manifest.json").write_text(json.dumps({
        "name": "demo", "version": "v1", "content_hash": "h", "created_at": "2026-12-05T00:00:00+00:00",
        "shards": [{"file": "shard-000000.parquet", "rows": 15}], "totals": {"rows": 15}}))
    (root / "releases" / "demo" / "LATEST").write_text("v1\n")
    ann = root / "annotations" / "length@1-abc" / "wiki_en" / "ing-test"
    ann.mkdir(parents=True)
    pq.write_table(pq.read_table(shards[0], columns=["id"]), ann / Path(shards[0]).name)
    cat = Catalog(str(root / "catalog.duckdb"))
    cat.start_run("run-1", "demo", "p.yaml", "h", "0", None)
    cat.refresh_views(str(root), {"length": "length@1-abc"})
    (root.parent / "secret.txt").write_text("outside the lake\n")
    return root


def q(lake: Path, sql: str):
    return readonly_query(str(lake / "catalog.duckdb"), str(lake), sql)


def test_tables_and_views_still_answer(lake):
    assert q(lake, "SELECT run_id, status FROM runs")[1] == [("run-1", "running")]
    assert q(lake, "SELECT count(*) FROM documents")[1] == [(30,)]
    assert q(lake, "SELECT count(*) FROM release_shards")[1] == [(15,)]
    assert q(lake, "SELECT count(*) FROM ann_length")[1] == [(15,)]
    assert q(lake, "WITH d AS (SELECT source FROM documents) SELECT source, count(*) FROM d GROUP BY 1")[1] == \
        [("wiki_en", 30)]
    assert q(lake, f"SELECT count(*) FROM read_parquet('{lake}/raw/*/*/part-*.parquet')")[1] == [(30,)]
    for ok in ("DESCRIBE runs", "SHOW TABLES", "SUMMARIZE SELECT * FROM runs", "EXPLAIN SELECT * FROM documents",
               "FROM runs", "VALUES (1)"):
        assert q(lake, ok)[1], ok


ESCAPES = {
    "copy into the lake": "COPY (SELECT 'v0') TO '{lake}/releases/demo/LATEST' (FORMAT csv, HEADER false)",
    "copy outside": "COPY (SELECT 1) TO '{lake}/../out.csv'",
    "export database": "EXPORT DATABASE '{lake}/../dump'",
    "explain analyze copy": "EXPLAIN ANALYZE COPY (SELECT 1) TO '{lake}/releases/x.csv'",
    "read_text passwd": "SELECT * FROM read_text('/etc/passwd')",
    "read_csv passwd": "SELECT * FROM read_csv('/etc/passwd', sep=':')",
    "read_text beside the lake": "SELECT * FROM read_text('{lake}/../secret.txt')",
    "read_parquet outside": "SELECT * FROM read_parquet('/tmp/../{lake}/../x.parquet')",
    # (DuckDB lets a query read the open database's own file: no escape, the catalog is what the door serves.)
    "read a lake file outside the data folders": "SELECT * FROM read_text('{lake}/runs/run-1.json')",
    "glob outside": "SELECT * FROM glob('/etc/*')",
    "network": "SELECT * FROM read_csv('https://example.com/x.csv')",
    "attach read-write": "ATTACH '{lake}/catalog.duckdb' AS rw (READ_WRITE)",
    "attach + use + drop": "ATTACH '{lake}/catalog.duckdb' AS rw (READ_WRITE); USE rw; DROP TABLE runs",
    "use": "USE memory",
    "detach": "DETACH catalog",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set external access": "SET enable_external_access = true",
    "set threads": "SET threads = 1",
    "reset": "RESET lock_configuration",
    "set variable": "SET VARIABLE v = 1",
    "pragma": "PRAGMA version",
    "pragma profiling": "PRAGMA enable_profiling",
    "call": "CALL pragma_version()",
    "checkpoint": "CHECKPOINT",
    "create": "CREATE TABLE t (a INT)",
    "create temp": "CREATE TEMP TABLE t (a INT)",
    "create macro": "CREATE MACRO m() AS 1",
    "drop": "DROP TABLE runs",
    "insert": "INSERT INTO runs (run_id) VALUES ('x')",
    "update": "UPDATE runs SET status = 'completed'",
    "delete": "DELETE FROM runs",
    "two statements": "SELECT 1; SELECT 2",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_is_refused_with_one_line(lake, name):
    latest = (lake / "releases" / "demo" / "LATEST").read_text()
    with pytest.raises(QueryRefused) as e:
        q(lake, ESCAPES[name].format(lake=lake))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    # Nothing was written or changed.
    assert (lake / "releases" / "demo" / "LATEST").read_text() == latest
    assert not (lake.parent / "out.csv").exists() and not (lake.parent / "dump").exists()
    assert not (lake / "releases" / "x.csv").exists()
    assert q(lake, "SELECT count(*) FROM runs")[1] == [(1,)]


def test_the_sandbox_holds_even_without_the_statement_check(lake):
    """Defence in depth: the connection itself refuses reads outside the lake and config changes."""
    con = sandboxed_connection(str(lake / "catalog.duckdb"), str(lake))
    try:
        for sql in ("SELECT * FROM read_text('/etc/passwd')", f"SELECT * FROM read_text('{lake}/../secret.txt')",
                    f"COPY (SELECT 1) TO '{lake}/../out2.csv'"):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        for sql in ("SET enable_external_access = true", "SET allowed_directories = ['/']"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                con.execute(sql)
        with pytest.raises(duckdb.Error):
            con.execute("DROP TABLE runs")
        with pytest.raises(duckdb.Error):
            con.execute("LOAD httpfs")
    finally:
        con.close()
    assert not (lake.parent / "out2.csv").exists()


@pytest.mark.parametrize("sql, expect", [
    ("COPY (SELECT 1) TO '{lake}/releases/demo/LATEST'", "COPY statements are refused"),
    ("SELECT * FROM read_text('/etc/passwd')", "reads only the catalog"),
])
def test_cli_prints_one_line_and_exits_2(lake, sql, expect):
    p = subprocess.run([sys.executable, "-m", "flows.cli", "sql", sql.format(lake=lake), "--lake", str(lake)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2, out
    assert expect in out and "Traceback" not in out
    assert len(out.splitlines()) <= 2  # rich may wrap one long line


def test_quarantine_time_column_survives(lake):
    """The door returns typed values (not strings) for the usual catalog columns."""
    cat = Catalog(str(lake / "catalog.duckdb"))
    cat.insert("artifacts", [{"stage": "s", "stage_key": "k", "path": "p", "run_id": "run-1", "metrics": "{}",
                              "created_at": now()}])
    cols, rows = q(lake, "SELECT stage, created_at FROM artifacts")
    assert cols == ["stage", "created_at"] and rows[0][0] == "s" and rows[0][1].year >= 2025
