"""A failed gate through the real flow: a wrong text mapping quarantines a whole source, `curate run`
exits 3 with the reason, the Prefect flow run fails, the catalog says why, nothing is published;
--accept-gates publishes it deliberately."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow


def _pipeline(root: Path, corpora: Path) -> Path:
    rows = pq.read_table(corpora / "wiki_en.parquet", columns=["url", "text"]).slice(0, 200).to_pylist()
    (root / "en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # "body" is not a field of these records: every wiki_fr row is quarantined at ingest.
    rows = pq.read_table(corpora / "wiki_fr.parquet", columns=["url", "text"]).slice(0, 120).to_pylist()
    (root / "fr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"name": "gated", "lake": str(root / "lake"), "executor": {"workers": 1},
           "sources": [{"name": "wiki_en", "format": "jsonl", "paths": [str(root / "en.jsonl")],
                        "columns": {"text": "text", "id": "url"}},
                       {"name": "wiki_fr", "format": "jsonl", "paths": [str(root / "fr.jsonl")],
                        "columns": {"text": "body", "id": "url"}}],
           "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 5}}],
           "release": {"name": "gated", "select": "length.keep"}}
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


def test_failed_gate_fails_the_run_and_publishes_nothing(tmp_path, corpora):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import curate_flow
    pipeline = _pipeline(tmp_path, corpora)
    state = curate_flow(config_path=str(pipeline), return_state=True)
    assert state.is_failed()
    res = CliRunner().invoke(app, ["run", str(pipeline)])
    assert res.exit_code == 3, res.output
    assert "was not published" in res.output and "source wiki_fr released 0 rows" in res.output
    assert "--accept-gates" in res.output
    lake = tmp_path / "lake"
    root = lake / "releases" / "gated"
    assert not (root / "LATEST").exists()
    assert sorted(p.name for p in root.iterdir()) == ["_rejected"]
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT status, message FROM runs ORDER BY started_at").fetchall()
        assert [r[0] for r in runs] == ["failed", "failed"] and "source wiki_fr released 0 rows" in runs[-1][1]
        fails = con.execute("SELECT DISTINCT gate, source FROM release_gates WHERE outcome = 'fail' "
                            "AND NOT published ORDER BY gate").fetchall()
        assert fails == [("max_quarantine_rate", "wiki_fr"), ("min_source_rows", "wiki_fr")]
        assert con.execute("SELECT count(*) FROM releases").fetchone() == (0,)
    finally:
        con.close()
    # Accepted deliberately: published, and the catalog says the failures were accepted.
    res = CliRunner().invoke(app, ["run", str(pipeline), "--accept-gates"])
    assert res.exit_code == 0, res.output
    assert "gates failed and were accepted" in res.output
    version = (root / "LATEST").read_text().strip()
    manifest = json.loads((root / version / "manifest.json").read_text())
    assert manifest["gates"]["accepted"] and manifest["sources"]["wiki_fr"]["rows_quarantined"] == 120
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM release_gates WHERE version = ? AND outcome = 'fail' "
                           "AND accepted AND published", [version]).fetchone()[0] == 2
    finally:
        con.close()
