"""``Catalog.held``: one connection for a burst of catalog work (the run's healing, a stage's rows,
the release's rows). The catalog holds the same rows as with a connection per statement, a
transaction inside still rolls back as a whole, and the file is opened once."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_lake, real_texts
from warehouse import catalog as catalog_mod
from warehouse.catalog import Catalog, now
from warehouse.catalog_sync import record_stage_results, sync_catalog
from warehouse.health import heal_on_start
from warehouse.report.summary import source_accounting

TABLES = ("runs", "shards", "ingested_files", "stage_runs", "stage_timings", "_journal")


@pytest.fixture
def lakes(tmp_path, corpora) -> tuple[Path, Path]:
    texts = real_texts(corpora, "wiki_en", 20)
    out = []
    for name in ("a", "b"):
        root = tmp_path / name
        make_lake(root, {"wiki_en": [texts[:10], texts[10:]], "wiki_fr": [real_texts(corpora, "wiki_fr", 5)]})
        out.append(root)
    return out[0], out[1]


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """Every catalog file open (``open_catalog``), by path."""
    seen: list[str] = []
    real = catalog_mod.open_catalog

    def counting(path, read_only, *a, **k):
        seen.append(path)
        return real(path, read_only, *a, **k)

    monkeypatch.setattr(catalog_mod, "open_catalog", counting)
    return seen


def _work(root: Path) -> None:
    """What a run does to the catalog at its start and after a stage."""
    cat = Catalog.of_lake(str(root))
    heal_on_start(str(root), cat, "run-1")
    cat.start_run("run-1", "p", "p.yaml", "h", "0", None)
    cat.insert("stage_timings", [{"run_id": "run-1", "stage": "length", "stage_key": "k", "kind": "length_filter",
                                  "phase": "apply", "status": "computed", "shards": 3, "rows": 25, "seconds": 0.5,
                                  "started_at": now()}])
    record_stage_results(cat, [{"run_id": "run-1", "stage": "length", "stage_key": "k", "kind": "length_filter",
                                "version": "1", "source": "wiki_en", "shard": "s", "status": "computed", "rows": 10,
                                "row_errors": 0, "seconds": 0.5, "error": None, "recorded_at": now()}])


def _dump(root: Path) -> dict[str, list[tuple]]:
    cat = Catalog.of_lake(str(root))
    # Timestamps and journal entry names differ from run to run; the rows must not.
    cols = {"runs": "run_id, pipeline, status", "shards": "path, source, rows, text_bytes",
            "ingested_files": "source, path, rows_in, rows_written", "stage_runs": "run_id, stage, shard, status, rows",
            "stage_timings": "run_id, stage, phase, rows", "_journal": "count(*)"}
    return {t: sorted(cat.query(f"SELECT {cols[t]} FROM {t}")[1], key=repr) for t in TABLES}


def test_held_writes_the_same_rows_with_one_open(lakes, opens):
    plain, held = lakes
    _work(plain)
    n_plain = len(opens)
    opens.clear()
    with Catalog.of_lake(str(held)).held():
        _work(held)
    assert len(opens) == 1 < n_plain
    want = {t: [tuple(str(v).replace(str(plain), "") for v in r) for r in rows] for t, rows in _dump(plain).items()}
    got = {t: [tuple(str(v).replace(str(held), "") for v in r) for r in rows] for t, rows in _dump(held).items()}
    assert got == want
    assert got["shards"] and got["stage_runs"] and got["runs"] == [("run-1", "p", "running")]


def test_a_transaction_inside_a_hold_still_rolls_back(lakes):
    root = lakes[0]
    cat = Catalog.of_lake(str(root))
    with cat.held():
        sync_catalog(cat, str(root))
        with pytest.raises(RuntimeError), cat.transaction():
            cat.insert("artifacts", [{"stage": "s", "stage_key": "k", "run_id": "r", "created_at": now()}])
            raise RuntimeError("killed mid-way")
        assert cat.query("SELECT count(*) FROM artifacts")[1] == [(0,)]  # the hold is still usable
        cat.insert("artifacts", [{"stage": "s", "stage_key": "k2", "run_id": "r", "created_at": now()}])
    assert cat.query("SELECT stage_key FROM artifacts")[1] == [("k2",)]


def test_a_read_only_hold_serves_queries_on_one_connection(lakes, opens):
    root = lakes[0]
    Catalog.of_lake(str(root)).init()
    opens.clear()
    assert source_accounting(Catalog.of_lake(str(root)), "none", "v") == []  # two queries
    assert len(opens) == 1
