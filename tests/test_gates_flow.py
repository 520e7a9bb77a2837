"""A failed gate through the real flow: a wrong text mapping quarantines a whole source, `curate run`
exits 3 with the reason, the Prefect flow run fails, the catalog says why, nothing is published;
--accept-gates publishes it deliberately."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from tests.browser import find_chromium

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
           "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 30}}],  # drops 10 of 200 wiki_en rows
           "release": {"name": "gated", "select": "length.keep"}}
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


@pytest.fixture(scope="module")
def gated(tmp_path_factory, corpora):
    """The pipeline run twice and stopped by its gates both times: through the flow, then `curate run`."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import curate_flow
    tmp_path = tmp_path_factory.mktemp("gated")
    pipeline = _pipeline(tmp_path, corpora)
    state = curate_flow(config_path=str(pipeline), return_state=True)
    res = CliRunner().invoke(app, ["run", str(pipeline)])
    return {"tmp": tmp_path, "pipeline": pipeline, "state": state, "res": res}


def _rejected_page(lake: Path) -> Path:
    [record] = (lake / "releases" / "gated" / "_rejected").iterdir()
    return lake / "reports" / "gated" / "_rejected" / record.stem / "report.html"


def test_failed_gate_fails_the_run_and_publishes_nothing(gated):
    from typer.testing import CliRunner

    from flows.cli import app
    tmp_path, pipeline, res = gated["tmp"], gated["pipeline"], gated["res"]
    assert gated["state"].is_failed()
    assert res.exit_code == 3, res.output
    assert "was not published" in res.output and "source wiki_fr released 0 rows" in res.output
    assert "--accept-gates" in res.output
    lake = tmp_path / "lake"
    root = lake / "releases" / "gated"
    assert not (root / "LATEST").exists()
    assert sorted(p.name for p in root.iterdir()) == ["_rejected"]
    [record] = (root / "_rejected").iterdir()
    rejected_page = _check_rejected_report(lake, json.loads(record.read_text()), res.output)
    # `curate report NAME/VERSION` writes it again; `curate sample` reads its documents.
    ref = f"gated/{record.stem}"
    again = CliRunner().invoke(app, ["report", ref, "--lake", str(lake), "--out", str(tmp_path / "again.html")])
    assert again.exit_code == 0 and "REJECTED" in again.output, again.output
    got, first = _report_data((tmp_path / "again.html").read_text()), _report_data(rejected_page.read_text())
    assert got["release"]["rejected"] and got["accounting"] == first["accounting"] and got["examples"] == first["examples"]
    drawn = CliRunner().invoke(app, ["sample", "--release", ref, "--reason", "length", "-n", "3", "--lake", str(lake)])
    assert drawn.exit_code == 0 and "10 documents match; 3 shown" in drawn.output, drawn.output
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT status, message FROM runs ORDER BY started_at").fetchall()
        assert [r[0] for r in runs] == ["failed", "failed"] and "source wiki_fr released 0 rows" in runs[-1][1]
        assert all(str(rejected_page) in r[1] for r in runs), "the run's record names the rejected report"
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
    # The same release, published: its own report is not marked rejected, and the rejected one stays.
    published = _report_data((lake / "reports" / "gated" / version / "report.html").read_text())
    assert not published["release"]["rejected"] and published["accounting"] == _report_data(
        rejected_page.read_text())["accounting"]
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM release_gates WHERE version = ? AND outcome = 'fail' "
                           "AND accepted AND published", [version]).fetchone()[0] == 2
    finally:
        con.close()


@pytest.mark.skipif(find_chromium() is None, reason="no chromium on this machine (apt-get install -y chromium)")
def test_rejected_report_renders_in_a_real_browser(gated, tmp_path):
    """The rejected release's page in headless Chromium: the red REJECTED banner with both failed
    gates is on the first screen, every plot drew its marks, no JavaScript error, no request."""
    from tests.browser import render
    page_path = _rejected_page(gated["tmp"] / "lake")
    got = render(page_path, tmp_path / "shot.png", height=900, visible=("section.rejected",))
    assert got["page_errors"] == [] and got["console_errors"] == [] and got["requests"] == []
    assert got["title"].startswith("curate report · gated/") and got["title"].endswith("REJECTED")
    banner = got["visible"]["section.rejected"]
    assert banner is not None, "the REJECTED banner is not shown on the first screen"
    fails = [c for c in got["data"]["gates"]["checks"] if c["outcome"] == "fail"]
    assert "REJECTED" in banner and "2 gates failed" in banner and len(fails) == 2
    for c in fails:  # each failed gate, with its message, as the browser shows it
        assert c["gate"] in banner and " ".join(c["message"].split()) in " ".join(banner.split()), (c, banner)
    plots = got["plots"]
    # A waterfall per source and the histograms of the length filter's annotations at least.
    n_hist = sum(1 for h in got["data"]["histograms"] if h["kind"] == "histogram")
    assert n_hist and len(plots) >= len(got["data"]["waterfall"]) + n_hist
    for p in plots:
        assert p["width"] > 100 and p["height"] > 50 and p["drawn"] > 0, p
    assert (tmp_path / "shot.png").stat().st_size > 20_000


def _report_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="curate-report-data">(.*?)</script>', page, re.S)
    assert m, "the report embeds its numbers"
    return json.loads(m.group(1))


def _check_rejected_report(lake: Path, record: dict, output: str) -> Path:
    """The rejected release's report: where the terminal said, marked REJECTED with the failed
    gates before anything else, its numbers those of the record the release step kept."""
    page_path = lake / "reports" / "gated" / "_rejected" / record["version"] / "report.html"
    assert f"The report of the rejected release (what it would have been, failed gates first): {page_path}" in output
    page = page_path.read_text()
    assert "curate report · gated/" in page and "· REJECTED</title>" in page
    banner = page.split('<section class="rejected"', 1)[1].split("</section>", 1)[0]
    assert page.index('<section class="rejected"') < page.index("<nav>") < page.index('id="accounting"')
    fails = [c for c in record["gates"]["checks"] if c["outcome"] == "fail"]
    assert len(fails) == 2 and "2 gates failed" in banner
    for c in fails:
        assert html.escape(c["message"]) in banner
    data = _report_data(page)
    assert data["release"]["rejected"] and data["release"]["shards"] == 0
    assert data["release"]["rows"] == record["totals"]["rows"] == record["sources"]["wiki_en"]["rows_kept"] > 0
    assert {s: a["rows_in"] for s, a in data["accounting"].items()} == {"wiki_en": 200, "wiki_fr": 120}
    assert data["accounting"]["wiki_fr"]["rows_quarantined"] == 120
    assert {(d["stage"], d["reason"]) for d in data["drop_reasons"]} == {
        (d["stage"], d["reason"]) for d in record["drop_reasons"]}
    assert sorted(c["gate"] for c in data["gates"]["checks"] if c["outcome"] == "fail") == [
        "max_quarantine_rate", "min_source_rows"]
    # The length filter's drops come with example documents, read from the raw shards.
    drops = [g for g in data["examples"] if g["stage"] == "length"]
    assert drops and all(e["text"] for g in drops for e in g["examples"])
    return page_path
