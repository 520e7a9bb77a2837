"""End to end through the real Prefect flow on the bundled demo corpus: release, catalog,
idempotent re-run, and a nightly run that ingests only the new file."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml
from fastwarc.warc import ArchiveIterator, WarcRecordType

from flows.pipeline import run_pipeline
from tests.helpers import EMBEDDINGS, REWRITES, share_cache

pytestmark = pytest.mark.slow


def _input_rows(data: Path) -> dict[str, int]:
    """Rows in each demo input, counted without any of our code."""
    import gzip

    import zstandard
    warc = sum(1 for _ in ArchiveIterator(open(data / "handbook.warc.gz", "rb"), record_types=WarcRecordType.response))
    with open(data / "wiki_es.jsonl.zst", "rb") as f:
        es = zstandard.ZstdDecompressor().stream_reader(f).read().decode().count("\n")
    return {
        "wiki_en": pq.read_metadata(data / "wiki_en.parquet").num_rows,
        "wiki_fr": gzip.open(data / "wiki_fr.jsonl.gz", "rt").read().count("\n"),
        "wiki_es": es,
        "python_docs": (data / "python_docs.jsonl").read_text().count("\n"),
        "handbook": warc,
    }


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory, demo_dir):
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(demo_dir / "data", root / "data")
    shutil.copytree(demo_dir / "benchmarks", root / "benchmarks")
    shutil.copytree(demo_dir / "ppl_corr", root / "ppl_corr")
    cfg = yaml.safe_load((demo_dir / "pipeline.yaml").read_text())
    cfg["lake"] = str(root / "lake")
    cfg["sources"][0]["paths"] = ["data/wiki_en*.parquet"]  # so the nightly test can add a file
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def first_run(demo_copy, model_results):
    out = run_pipeline(str(demo_copy / "pipeline.yaml"))
    # Computed here with the real models; left for the modules that are not about them.
    share_cache(demo_copy / "lake", model_results, REWRITES)
    share_cache(demo_copy / "lake", model_results, EMBEDDINGS)
    return out


def test_release_and_catalog(demo_copy, first_run):
    lake = demo_copy / "lake"
    rel = first_run["release"]
    assert rel["created"] and rel["rows"] > 200
    manifest = json.loads((Path(rel["path"]) / "manifest.json").read_text())
    for s in manifest["shards"]:
        assert hashlib.sha256((Path(rel["path"]) / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    # The default gates pass the demo (warning about the web-crawl rules that eat Wikipedia summaries).
    assert manifest["gates"]["passed"] and not manifest["gates"]["accepted"]
    assert any(c["outcome"] == "warn" and c["rule"] == "c4:c4_too_few_sentences" for c in manifest["gates"]["checks"])
    expected = _input_rows(demo_copy / "data")
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    got = dict(con.execute("SELECT source, rows_in FROM release_sources").fetchall())
    assert {k: v for k, v in got.items() if "." not in k} == expected  # derived (synthetic) sources have a "."
    bad = con.execute("SELECT count(*) FROM release_sources WHERE rows_in != rows_kept + rows_dropped + rows_quarantined").fetchone()
    assert bad == (0,)
    assert con.execute("SELECT status FROM runs").fetchall() == [("completed",)]
    # The views read the same files the manifest describes.
    assert con.execute("SELECT count(*) FROM release_shards").fetchone()[0] == manifest["totals"]["rows"]
    assert con.execute("SELECT count(*) FROM documents WHERE source NOT LIKE '%.%'").fetchone()[0] == sum(expected.values())
    # The rewrite stage made synthetic documents; the release mixes them in, each traceable to its parent.
    syn = con.execute("SELECT meta FROM release_shards WHERE source LIKE '%.%'").fetchall()
    assert syn and all(json.loads(m)["lineage"]["parent_id"] for (m,) in syn)
    assert con.execute("SELECT sum(generated) FROM rewrite_summary").fetchone()[0] > 0
    # A row dropped by several filters is counted once, for the first filter in pipeline order.
    n_short = con.execute("SELECT count(*) FROM ann_length l JOIN ann_langid g USING (id) "
                          "WHERE NOT l.keep AND g.keep").fetchone()[0]
    dropped = con.execute("SELECT sum(rows) FROM drop_reasons WHERE stage='length'").fetchone()[0]
    assert n_short == dropped > 0
    # The planted benchmark overlap is found, and the LLM grader scored its sample with the real model.
    assert con.execute("SELECT count(*) FROM ann_decontam WHERE NOT keep").fetchone()[0] == 3
    # Heuristic filters report drops per rule per source.
    rules = con.execute("SELECT DISTINCT stage FROM drop_reasons WHERE stage IN ('gopher', 'c4')").fetchall()
    assert len(rules) == 2
    graded = con.execute("SELECT count(*), min(score), max(score) FROM ann_grade WHERE score IS NOT NULL").fetchone()
    assert graded[0] > 20 and 0 < graded[1] <= graded[2] < 1
    # The release follows the planned mixture: weights and phases are in the catalog.
    mix = con.execute("SELECT count(DISTINCT source) FILTER (WHERE source NOT LIKE '%.%'), sum(weight) "
                      "FROM release_mixture WHERE phase='main'").fetchone()
    assert mix[0] == 5 and abs(mix[1] - 1) < 1e-9
    phases = con.execute("SELECT phase, start_row, end_row FROM release_phases ORDER BY start_row").fetchall()
    assert len(phases) == 2 and phases[0][1] == 0 and phases[-1][2] == manifest["totals"]["rows"]
    # The release carries the cleaned, redacted text: not one e-mail address (the raw demo text has some).
    email = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
    assert con.execute(f"SELECT count(*) FROM release_shards WHERE regexp_matches(text, '{email}')").fetchone() == (0,)
    assert con.execute(f"SELECT count(*) FROM documents WHERE regexp_matches(text, '{email}')").fetchone()[0] > 0
    assert {r[0] for r in con.execute("SELECT DISTINCT stage FROM release_text").fetchall()} == {"boilerplate", "c4", "pii"}
    # Handbook pages came through HTML extraction: text, no markup, urls and WARC dates kept.
    rows = con.execute("SELECT text, url, crawl_date, domain FROM release_shards WHERE source='handbook' LIMIT 5").fetchall()
    assert rows and all("<div" not in t and u.startswith("https://debian-handbook.info/") and d == "debian-handbook.info"
                        for t, u, _, d in rows)
    con.close()


def test_rerun_is_a_no_op(demo_copy, first_run):
    again = run_pipeline(str(demo_copy / "pipeline.yaml"))
    assert all(i["files"] == 0 for i in again["ingest"])
    assert all(s["computed"] == 0 and s["skipped"] > 0 for s in again["stages"])
    assert again["release"]["version"] == first_run["release"]["version"] and not again["release"]["created"]


def test_nightly_run_ingests_only_new_files(demo_copy, first_run, corpora):
    extra = pq.read_table(corpora / "wiki_en.parquet").slice(3000, 250)  # the demo has rows 0-599; the sample 3,500
    pq.write_table(extra, demo_copy / "data" / "wiki_en_new.parquet")
    night = run_pipeline(str(demo_copy / "pipeline.yaml"))
    ingest = {i["source"]: i for i in night["ingest"]}
    assert ingest["wiki_en"]["files"] == 1 and ingest["wiki_en"]["rows_in"] == 250
    assert all(i["files"] == 0 for s, i in ingest.items() if s != "wiki_en")
    stages: dict = {}
    for s in night["stages"]:  # a stage's first pass (after a rewrite stage the earlier ones run again)
        stages.setdefault(s["stage"], s)
    assert stages["length"]["computed"] == 1  # only the new shard
    # Global stages keep their keys night after night (pinned models, incremental indexes):
    # only the new shard is annotated, earlier annotations stay as they are.
    for name in ("dedup", "fuzzy", "boilerplate", "quality", "distilled", "pplcorr", "decontam"):
        assert stages[name]["computed"] <= 1 and stages[name]["skipped"] > 0, (name, stages[name])
    assert stages["dedup"]["computed"] == stages["quality"]["computed"] == 1
    rel = night["release"]
    assert rel["created"] and rel["version"] != first_run["release"]["version"]
    manifest = json.loads((Path(rel["path"]) / "manifest.json").read_text())
    assert manifest["parent"] == first_run["release"]["version"]
    assert manifest["sources"]["wiki_en"]["rows_in"] == _input_rows(demo_copy / "data")["wiki_en"] + 250


def test_cli_reads_the_catalog(demo_copy, first_run):
    from typer.testing import CliRunner

    from flows.cli import app
    runner = CliRunner()
    lake = str(demo_copy / "lake")
    for cmd in (["--help"], ["run", "--help"], ["serve", "--help"], ["stats", "--help"], ["sql", "--help"],
                ["releases", "--help"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 0 and "Usage" in res.output, res.output
    res = runner.invoke(app, ["stats", "--lake", lake])
    assert res.exit_code == 0 and "drop reasons" in res.output and "too_few_words" in res.output
    res = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM releases", "--lake", lake, "--json"])
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["n"] >= 1
    res = runner.invoke(app, ["sql", "SELEC nonsense", "--lake", lake])
    assert res.exit_code == 1 and "Parser Error" in res.output
    res = runner.invoke(app, ["releases", "--lake", lake])
    assert res.exit_code == 0 and first_run["release"]["version"] in res.output
    res = runner.invoke(app, ["stats", "--lake", str(demo_copy / "nowhere")])
    assert res.exit_code == 1 and "curate run" in res.output


def test_releases_diff_after_nightly(demo_copy, first_run):
    from warehouse.catalog import Catalog
    from warehouse.releases_diff import diff_releases
    cat = Catalog(str(demo_copy / "lake" / "catalog.duckdb"))
    versions = [v for (v,) in cat.query("SELECT version FROM releases ORDER BY created_at")[1]]
    assert len(versions) == 2, "runs after test_nightly_run_ingests_only_new_files"
    diff = diff_releases(cat, f"demo/{versions[0]}", f"demo/{versions[1]}")
    cols, rows = diff["per source"]
    per = {r[0]: dict(zip(cols, r)) for r in rows}
    assert per["wiki_en"]["kept_delta"] > 0 and per["wiki_fr"]["kept_delta"] == 0
    cols, [tot] = diff["totals"]
    assert dict(zip(cols, tot))["rows_delta"] == sum(p["released_delta"] for p in per.values())


@pytest.mark.parametrize("check", ["test_jsonl", "test_hf_load_dataset", "test_mds_streaming_dataset",
                                   "test_megatron_indexed_dataset"])
def test_demo_release_exports_and_reads_back(check, tmp_path, first_run):
    """The real demo release (planned mixture, curriculum order) through every exporter, read
    back with each trainer's own reader (the checks of tests/export, on this release)."""
    from engines.inference.models import smollm2_tokenizer
    from tests.export import test_export
    getattr(test_export, check)(tmp_path, Path(first_run["release"]["path"]), smollm2_tokenizer())
