"""A lake that heals, on a real run of the demo-like pipeline (real text, no model stages):
each damage case is detected and named by `curate check`, repaired by `curate repair` (or by the
next run where it heals automatically), and a deleted or garbage catalog is rebuilt from the lake
with the same rows and the same answers to the README's queries.

The tests share one lake and run in file order; each leaves the lake healthy for the next."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from flows.pipeline import run_pipeline
from tests.conftest import REPO
from tests.helpers import LIGHT_KINDS, demo_config
from warehouse.catalog import Catalog
from warehouse.health import check_lake, repair_lake
from warehouse.sql_door import readonly_query

pytestmark = pytest.mark.slow


def readme_queries() -> list[str]:
    """The numbered example queries of the README's "Useful queries" section."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Useful queries", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    body = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
    queries = [q.strip() for q in body.split(";") if q.strip()]
    assert len(queries) >= 8
    return queries


def answers(lake: Path) -> list[list[tuple]]:
    """The rows each README query returns, sorted: rows that tie on a query's ORDER BY (equal
    mixture weights, say) come back in no defined order, even from the same catalog."""
    return [sorted(readonly_query(str(lake / "catalog.duckdb"), str(lake), q)[1], key=repr) for q in readme_queries()]


def all_tables(lake: Path) -> dict[str, list[tuple]]:
    """Every row of every catalog table, sorted (``_journal.applied_at`` aside: when it was applied)."""
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        out = {}
        for t in names:
            cols = "entry" if t == "_journal" else "*"
            out[t] = sorted(con.execute(f'SELECT {cols} FROM "{t}"').fetchall(), key=repr)
        return out
    finally:
        con.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    # A narrow terminal: an error's remedy (a command to copy) must stay on one line whatever the
    # width and the length of the paths in it (CI once saw "curate catalog\nrebuild").
    env = dict(os.environ, CURATE_PROGRESS="0", PYTHONPATH=str(REPO), COLUMNS="60")
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def _accounting(lake: Path) -> dict[str, dict]:
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT source, rows_in, rows_kept, rows_dropped, rows_quarantined FROM release_sources "
                           "WHERE version = (SELECT version FROM releases ORDER BY created_at DESC LIMIT 1)").fetchall()
        return {r[0]: r[1:] for r in rows}
    finally:
        con.close()


@pytest.fixture(scope="module")
def lake(tmp_path_factory, demo_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("heal")
    cfg = demo_config(demo_dir, root / "lake", drop_kinds=LIGHT_KINDS)
    cfg["executor"] = {"workers": 2, "batch_rows": 256, "shard_bytes": 50_000}
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    run_pipeline(str(root / "p.yaml"))
    return root / "lake", root / "p.yaml"


@pytest.fixture(scope="module")
def reference(lake) -> dict:
    lake_dir, _ = lake
    return {"accounting": _accounting(lake_dir), "answers": answers(lake_dir), "tables": all_tables(lake_dir)}


def test_a_fresh_lake_is_healthy(lake, reference):
    lake_dir, _ = lake
    assert check_lake(str(lake_dir), deep=True) == []
    p = _cli("check", "--lake", str(lake_dir))
    assert p.returncode == 0 and "healthy" in p.stdout


def _parts(lake: Path, source: str) -> list[Path]:
    return sorted(lake.glob(f"raw/{source}/*/part-*.parquet"))


def test_each_damage_is_named_and_repaired(lake, reference):
    lake_dir, pipeline = lake
    many, other_source = "wiki_en", "python_docs"
    en_parts, fr_parts = _parts(lake_dir, many), _parts(lake_dir, other_source)
    # 1. a deleted raw shard; 2. a truncated raw shard; 3. a truncated annotation file;
    # 4. an annotation whose ids do not match its raw shard; 5. a damaged release shard;
    # 6. a run left `running` by a killed process; 7. a stale temporary of an atomic write.
    deleted = en_parts[-1]
    deleted.unlink()
    truncated_raw = fr_parts[0]
    truncated_raw.write_bytes(truncated_raw.read_bytes()[:500])
    intact = [s for s in ("wiki_fr", "wiki_es", "handbook", "python_docs", "wiki_en") if s not in (many, other_source)]
    anns = sorted(lake_dir.glob(f"annotations/length@*/{intact[0]}/*/part-*.parquet"))
    truncated_ann = anns[0]
    truncated_ann.write_bytes(truncated_ann.read_bytes()[:-200])
    other = sorted(lake_dir.glob(f"annotations/langid@*/{intact[1]}/*/part-*.parquet"))[0]
    swapped = sorted(lake_dir.glob(f"annotations/langid@*/{intact[0]}/*/part-*.parquet"))[0]
    other_bytes = other.read_bytes()
    other.write_bytes(swapped.read_bytes())  # a well-formed file, but for another shard
    shard = next(p for p in lake_dir.glob("releases/*/*/shard-000000.parquet"))
    shard_bytes = shard.read_bytes()
    shard.write_bytes(shard_bytes[:100] + bytes([shard_bytes[100] ^ 0xFF]) + shard_bytes[101:])
    Catalog(str(lake_dir / "catalog.duckdb")).start_run("run-killed", "demo", str(pipeline), "h", "0", None)
    tmp = lake_dir / "annotations" / ".tmp-999-abcdef12-part-00000-000.parquet"
    tmp.write_bytes(b"partial")

    found = {(f.kind, f.path) for f in check_lake(str(lake_dir))}
    expected = {("raw_missing", str(deleted)), ("raw_damaged", str(truncated_raw)),
                ("annotation_damaged", str(truncated_ann)), ("annotation_damaged", str(other)),
                ("release_damaged", str(shard)), ("run_killed", str(lake_dir / "runs" / "run-killed.json")),
                ("tmp_leftover", str(tmp))}
    assert expected <= found, found - expected
    # Annotations of the damaged raw shards are not judged against them: only what is listed above.
    assert {k for k, _ in found} == {k for k, _ in expected}

    # The CLI names each damaged file and exits 1.
    p = _cli("check", "--lake", str(lake_dir))
    assert p.returncode == 1
    for _, path in expected:
        assert path in p.stdout.replace("\n    ", "")

    # Until repaired, a run fails on the damaged release? No: releases are immutable and reused; the
    # damaged shard is the one thing repair leaves to the user, with instructions.
    shard.write_bytes(shard_bytes)
    p = _cli("repair", "--lake", str(lake_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "re-ingest" in p.stdout and "run-killed" in p.stdout
    assert not tmp.exists() and not truncated_ann.exists() and not other.exists()
    assert not list(lake_dir.glob(f"raw/{other_source}/*/_done/{truncated_raw.name[5:10]}.json"))

    run_pipeline(str(pipeline))
    assert check_lake(str(lake_dir)) == []
    assert _accounting(lake_dir) == reference["accounting"]
    assert other.read_bytes() != swapped.read_bytes() and other.exists()
    del other_bytes
    con = duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
    status, msg = con.execute("SELECT status, message FROM runs WHERE run_id='run-killed'").fetchone()
    con.close()
    assert status == "failed" and "killed" in msg


def test_a_run_heals_missing_raw_shards_and_damaged_annotations_itself(lake, reference):
    lake_dir, pipeline = lake
    gone = _parts(lake_dir, "wiki_es")[0]
    gone.unlink()
    ann = sorted(lake_dir.glob("annotations/gopher@*/wiki_en/*/part-*.parquet"))[0]
    ann.write_bytes(ann.read_bytes()[:-100])
    summary = run_pipeline(str(pipeline))
    assert summary["release"]["rows"] > 0
    assert gone.exists() and ann.exists()
    assert check_lake(str(lake_dir)) == []
    assert _accounting(lake_dir) == reference["accounting"]


def test_an_error_names_the_damaged_file(lake):
    """Damage the run cannot heal by itself (a raw shard's middle) fails with the file named, not a bare ArrowInvalid."""
    lake_dir, pipeline = lake
    raw = _parts(lake_dir, "handbook")[0]
    data = raw.read_bytes()
    raw.write_bytes(data[:4] + b"\0" * 2000 + data[2004:])  # pages broken, footer intact
    # Move the release aside so the run has to read the raw shards again (an unchanged release is reused).
    releases, aside = lake_dir / "releases", lake_dir.parent / "releases-aside"
    releases.rename(aside)
    try:
        p = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=REPO, capture_output=True,
                           text=True, timeout=900, env=dict(os.environ, CURATE_PROGRESS="0", PYTHONPATH=str(REPO)))
        assert p.returncode != 0
        assert str(raw) in p.stdout + p.stderr
        assert any(f.kind == "raw_damaged" and f.path == str(raw) for f in check_lake(str(lake_dir), deep=True))
    finally:
        raw.write_bytes(data)
        shutil.rmtree(releases, ignore_errors=True)
        aside.rename(releases)
    done, left = repair_lake(str(lake_dir), check_lake(str(lake_dir)))
    assert left == [] and any("failed" in d or "temporary" in d or "deleted" in d for d in done) or not done


def test_garbage_catalog_is_named_and_rebuilt(lake, reference):
    lake_dir, pipeline = lake
    before = all_tables(lake_dir)
    before_answers = answers(lake_dir)
    cat = lake_dir / "catalog.duckdb"
    cat.write_bytes(b"this is not a database" * 1000)
    for args in (("stats", "--lake", str(lake_dir)), ("run", str(pipeline))):
        p = _cli(*args)
        out = p.stdout + p.stderr
        assert p.returncode == 1 and "curate catalog rebuild" in out and "Traceback" not in out, out[-2000:]
    assert [f.kind for f in check_lake(str(lake_dir))] == ["catalog_damaged"]
    p = _cli("catalog", "rebuild", "--lake", str(lake_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    assert all_tables(lake_dir) == before
    assert answers(lake_dir) == before_answers
    assert (lake_dir / "catalog.duckdb.before-rebuild").read_bytes().startswith(b"this is not")


def test_deleted_catalog_is_rebuilt_with_the_same_answers(lake, reference):
    lake_dir, pipeline = lake
    before = all_tables(lake_dir)
    before_answers = answers(lake_dir)
    assert any(before_answers), "the README queries should return rows on this lake"
    (lake_dir / "catalog.duckdb").unlink()
    assert [f.kind for f in check_lake(str(lake_dir))] == ["catalog_missing"]
    done, left = repair_lake(str(lake_dir), check_lake(str(lake_dir)))
    assert left == [] and any("rebuilt the catalog" in d for d in done)
    assert all_tables(lake_dir) == before
    assert answers(lake_dir) == before_answers
    # The views over the lake are back too.
    assert readonly_query(str(lake_dir / "catalog.duckdb"), str(lake_dir),
                          "SELECT count(*) FROM ann_length")[1][0][0] > 0
    # And a run after the rebuild carries on from the same history.
    (lake_dir / "catalog.duckdb").unlink()
    run_pipeline(str(pipeline))
    con = duckdb.connect(str(lake_dir / "catalog.duckdb"), read_only=True)
    n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    con.close()
    assert n_runs == len(before["runs"]) + 1


def test_readme_queries_are_found():
    qs = readme_queries()
    assert any(re.search(r"FROM drop_reasons", q) for q in qs) and any("release_shards" in q for q in qs)
    json.dumps(qs)
