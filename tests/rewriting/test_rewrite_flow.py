"""A ``rewrite`` stage in a real Prefect flow with the real tiny model (SmolLM2-135M-Instruct on
CPU through transformers), on real text: derived documents with full lineage, later stages run on
them, the catalog counts what was generated, dropped (why) and released, the release mixes real
and synthetic text at the configured share, and a re-run generates nothing twice."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flows.pipeline import run_pipeline
from tests.helpers import real_texts

pytestmark = pytest.mark.slow

# Small limits so the 135M model on a shared CPU finishes in minutes (a handful of short prompts);
# the methods' own defaults are the published ones (rewriting/methods/).
LIMITS = {"max_segments": 1, "segment_tokens": 64, "min_segment_tokens": 8}
METHODS = ("wrap", "nemotron_cc", "prox", "rewire")


def _pipeline(root: Path, corpora: Path) -> Path:
    data = root / "data"
    data.mkdir()
    wiki = real_texts(corpora, "wiki_en", 6)
    docs = real_texts(corpora, "python_docs", 2)
    pq.write_table(pa.table({"text": wiki, "url": [f"https://en.wikipedia.org/{i}" for i in range(len(wiki))]}),
                   data / "wiki.parquet")
    pq.write_table(pa.table({"text": [d[:3000] for d in docs], "url": [f"https://docs.python.org/{i}" for i in range(2)]}),
                   data / "docs.parquet")
    cfg = {
        "name": "rw", "lake": "lake",
        "executor": {"kind": "local", "workers": 1},
        "sources": [{"name": "wiki", "format": "parquet", "paths": ["data/wiki.parquet"],
                     "columns": {"text": "text", "id": "url", "url": "url"}, "license": "CC-BY-SA-4.0"},
                    {"name": "docs", "format": "parquet", "paths": ["data/docs.parquet"],
                     "columns": {"text": "text", "id": "url", "url": "url"}, "license": "PSF-2.0"}],
        "stages": [
            {"name": "langid", "kind": "langid", "params": {"languages": ["en", "fr"]}},
            {"name": "length", "kind": "length_filter", "params": {"min_words": 20}},
            {"name": "rw", "kind": "rewrite", "params": {
                "inference": {"backend": "transformers", "model": "smollm2-135m-instruct", "threads": 1,
                              "batch_size": 8},
                "routes": [
                    {"method": "wrap", "styles": ["easy"], "when": "source == 'wiki' and length.keep",
                     "budget_tokens": 150, "max_tokens": 96, **LIMITS},
                    {"method": "nemotron_cc", "families": ["wikipedia"], "temperature": 0,
                     "when": "source == 'wiki'", "budget_tokens": 150, "max_tokens": 96, **LIMITS},
                    # ProX decodes under its program regex; REWIRE under its reply shape with a frequency
                    # penalty (the 135M model otherwise loops into max_tokens and every reply is truncated).
                    # One docs parent only (the budget): an edited parent gives way to its edited version,
                    # and the release gate wants some rows of every source.
                    {"method": "prox", "when": "source == 'docs'", "budget_tokens": 300, "max_tokens": 64,
                     **LIMITS},
                    {"method": "rewire", "when": "source == 'docs'", "budget_tokens": 1000, "max_tokens": 256,
                     **LIMITS}]}},
        ],
        "release": {"name": "rw", "select": "langid.keep and length.keep and rw.keep", "seed": 0,
                    "mixture": {"method": "unimax", "max_epochs": 4, "synthetic_share": 0.2}},
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root / "pipeline.yaml"


@pytest.fixture(scope="module")
def first(tmp_path_factory, corpora):
    root = tmp_path_factory.mktemp("rwflow")
    path = _pipeline(root, corpora)
    return root, run_pipeline(str(path))


def _rw(summary: dict) -> dict:
    return next(s for s in summary["stages"] if s["stage"] == "rw")


def test_every_method_generates_with_full_lineage(first):
    root, summary = first
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT method, status, reason, parent_id, parent_source, prompt_id, prompt_version, model, "
                       "sampling, segment_start, segment_end FROM rewrite_outputs").fetchall()
    assert {r[0] for r in rows} == set(METHODS)
    for _method, status, reason, parent, psrc, pid, pver, model, sampling, a, b in rows:
        assert parent and psrc in ("wiki", "docs") and pid and re.match(r"v\d+-", pver) and model
        assert json.loads(sampling)["max_tokens"] > 0 and 0 <= a < b
        assert (status == "kept") == (reason is None)
    # Kept candidates are documents of the derived sources, each traceable to a real parent.
    parents = {r[0]: r[1] for r in con.execute("SELECT id, text FROM documents WHERE source IN ('wiki', 'docs')").fetchall()}
    derived = con.execute("SELECT id, source, text, meta FROM documents WHERE source LIKE '%.%'").fetchall()
    kept = con.execute("SELECT count(*) FROM rewrite_outputs WHERE status = 'kept'").fetchone()[0]
    assert len(derived) == kept > 0
    # Every method, ProX and REWIRE included, made at least one derived document from real text.
    by_method = {json.loads(m)["lineage"]["method"] for _i, _s, _t, m in derived}
    assert by_method == set(METHODS), by_method
    for _id, src, text, meta in derived:
        lin = json.loads(meta)["lineage"]
        assert src == f"{lin['parent_source']}.{lin['route']}" and lin["parent_id"] in parents
        seg = lin["segment"]
        assert 0 <= seg["start"] < seg["end"] <= len(parents[lin["parent_id"]])
        assert lin["prompt"]["id"] and lin["generator"]["model"] == "smollm2-135m-instruct"
        assert text.strip() and text != parents[lin["parent_id"]]
        if lin["method"] == "prox":  # an edited parent: lines removed by a program that parsed
            assert lin["generator"]["regex"].startswith("(?:keep") and len(text) < len(parents[lin["parent_id"]])


def test_later_stages_ran_on_derived_documents(first):
    root, _ = first
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True)
    n_derived = con.execute("SELECT count(*) FROM documents WHERE source LIKE '%.%'").fetchone()[0]
    for stage in ("langid", "length"):  # stages listed before the rewrite ran again over its output
        n = con.execute(f"SELECT count(*) FROM ann_{stage} a JOIN documents d USING (id) "
                        "WHERE d.source LIKE '%.%'").fetchone()[0]
        assert n == n_derived


def test_catalog_counts_and_release_mixes_real_and_synthetic(first):
    root, summary = first
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True)
    summ = {r[0]: r[1:] for r in con.execute(
        "SELECT method, generated, kept, dropped, errors, rows_released FROM rewrite_summary").fetchall()}
    total = con.execute("SELECT method, count(*) FROM rewrite_outputs GROUP BY method").fetchall()
    for method, n in total:  # the view agrees with the raw table
        assert summ[method][0] == n
        g, k, d, e, _ = summ[method]
        assert g == k + d + e
    drops = con.execute("SELECT sum(candidates) FROM rewrite_drops").fetchone()[0] or 0
    assert drops == sum(v[2] for v in summ.values())
    rel = Path(summary["release"]["path"])
    manifest = json.loads((rel / "manifest.json").read_text())
    shards = pa.concat_tables([pq.read_table(rel / s["path"] if "path" in s else rel / s["file"])
                               for s in manifest["shards"]])
    src = shards.column("source").to_pylist()
    tokens = shards.column("n_tokens").to_pylist()
    syn = sum(t for s, t in zip(src, tokens) if "." in s)
    assert syn > 0, "no synthetic text released"
    share = syn / sum(tokens)
    # The share is planned at 0.2; sampling whole documents from a tiny pool lands near it.
    assert 0.05 < share < 0.45, share


def test_catalog_rebuilt_from_the_lake_keeps_the_rewrites(first):
    from warehouse.catalog_sync import rebuild_catalog
    root, _ = first
    db = str(root / "lake" / "catalog.duckdb")

    def facts() -> list:
        con = duckdb.connect(db, read_only=True)
        try:
            return sorted(con.execute("SELECT id, status, reason, method, parent_id, prompt_version FROM "
                                      "rewrite_outputs").fetchall())
        finally:
            con.close()
    before = facts()
    rebuild_catalog(str(root / "lake"))
    assert facts() == before and before


def test_rerun_generates_nothing_twice(first):
    root, summary = first
    # Force the stage to plan again (its annotations gone): every reply must come from the markers/cache.
    for d in (root / "lake" / "annotations").glob("rw@*"):
        shutil.rmtree(d)
    again = run_pipeline(str(root / "pipeline.yaml"))
    rw = _rw(again)
    assert rw.get("generated", 0) == rw.get("cached", 0)
    assert rw["computed"] > 0
    con = duckdb.connect(str(root / "lake" / "catalog.duckdb"), read_only=True)
    fresh = con.execute("SELECT count(*) FROM rewrite_outputs WHERE run_id = ? AND NOT cached",
                        [again["run_id"]]).fetchone()[0]
    assert fresh == 0
    assert again["release"]["version"] == summary["release"]["version"]


def test_the_model_is_let_go_after_the_stage(first):
    """With workers: 1 the rewrite's model lives in the flow's own process; the stage closes it
    before the next stage (on a GPU, the next model stage needs the memory)."""
    from engines.inference import base
    assert not [b for b in base._OPEN if not b.closed]
