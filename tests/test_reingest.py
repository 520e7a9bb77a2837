"""Input changes are re-ingested, and what they replace stops counting: a fixed column mapping, a
changed file, `--reingest SOURCE`; a source path that matches nothing. On real Wikipedia text."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from flows.ingest_plan import SourceMatchError, plan_source_ingest
from readers.ingest import file_fingerprint, reader_config
from schemas.config import PipelineConfig, SourceConfig
from warehouse.lake import Lake

N = 240  # documents in the mis-mapped source, in two files of N/2


@pytest.fixture(scope="module")
def docs(corpora: Path) -> list[dict]:
    rows = pq.read_table(corpora / "wiki_en.parquet", columns=["title", "text", "url"]).slice(0, N + 100).to_pylist()
    return [{"title": r["title"], "body": r["text"], "link": r["url"]} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def pipeline(root: Path, text_field: str) -> Path:
    cfg = {
        "name": "t", "lake": str(root / "lake"), "executor": {"workers": 1},
        "sources": [
            {"name": "wiki", "format": "jsonl", "paths": ["data/wiki-*.jsonl"],
             "columns": {"text": text_field, "id": "link", "url": "link"}},
            {"name": "fr", "format": "parquet", "paths": ["data/fr.parquet"], "columns": {"id": "url", "url": "url"}},
        ],
        "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 1}}],
        "release": {"name": "wiki", "select": "length.keep"},
    }
    p = root / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def released(rel: dict) -> list[dict]:
    files = sorted(Path(rel["path"]).glob("shard-*.parquet"))
    return [r for f in files for r in pq.read_table(f, columns=["id", "text", "source"]).to_pylist()]


def live_wiki_docs(lake: Path) -> int:
    """Wiki rows in the catalog's `documents` view; the `ann_length` view must agree (+ the 40 `fr` rows)."""
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        docs = con.execute("SELECT count(*) FROM documents WHERE source = 'wiki'").fetchone()[0]
        assert con.execute("SELECT count(*) FROM ann_length").fetchone()[0] == docs + 40
        return docs
    finally:
        con.close()


@pytest.mark.slow
def test_fixed_mapping_is_reingested_and_counted_once(tmp_path, docs, corpora):
    from flows.pipeline import run_pipeline
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "wiki-a.jsonl", docs[:N // 2])
    write_jsonl(tmp_path / "data" / "wiki-b.jsonl", docs[N // 2:N])
    pq.write_table(pq.read_table(corpora / "wiki_fr.parquet").slice(0, 40), tmp_path / "data" / "fr.parquet")
    lake = Lake(str(tmp_path / "lake"))

    # 1. The text is in "body", the file says "text": every row of the source is quarantined. (Whether
    #    the run then fails on a release gate or releases only `fr` does not matter here.)
    try:
        run_pipeline(str(pipeline(tmp_path, "text")))
    except Exception:  # noqa: BLE001 - a release gate may fail this run; the ingest is what is checked
        pass
    wrong = lake.ingest_markers("wiki")
    assert sum(m["rows_quarantined"] for m in wrong) == N and sum(m["rows_written"] for m in wrong) == 0

    # 2. Fix the mapping: both files are ingested again; the wrong ingest no longer counts.
    fixed = run_pipeline(str(pipeline(tmp_path, "body")))
    ingest = {i["source"]: i for i in fixed["ingest"]}
    assert ingest["wiki"]["files"] == 2 and ingest["wiki"]["rows_written"] == N and ingest["fr"]["files"] == 0
    rows = released(fixed["release"])
    wiki = [r for r in rows if r["source"] == "wiki"]
    assert len(wiki) == N and len({r["id"] for r in rows}) == len(rows)
    assert sorted(r["text"] for r in wiki) == sorted(d["body"] for d in docs[:N])
    manifest = json.loads((Path(fixed["release"]["path"]) / "manifest.json").read_text())
    assert manifest["sources"]["wiki"]["rows_in"] == N and manifest["sources"]["wiki"]["rows_quarantined"] == 0
    assert len(lake.ingest_markers("wiki", superseded=True)) == 4 and len(lake.ingest_markers("wiki")) == 2
    assert live_wiki_docs(tmp_path / "lake") == N
    con = duckdb.connect(str(tmp_path / "lake" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM superseded_ingests WHERE source='wiki'").fetchone()[0] == 2
    con.close()

    # 3. Nothing changed: nothing is ingested, the release is reused.
    again = run_pipeline(str(pipeline(tmp_path, "body")))
    assert all(i["files"] == 0 for i in again["ingest"])
    assert again["release"]["version"] == fixed["release"]["version"] and not again["release"]["created"]

    # 4. --reingest: the source is read afresh, and its documents are still released exactly once.
    fresh = run_pipeline(str(pipeline(tmp_path, "body")), reingest=["wiki"])
    ingest = {i["source"]: i for i in fresh["ingest"]}
    assert ingest["wiki"]["files"] == 2 and ingest["fr"]["files"] == 0
    rows = released(fresh["release"])
    assert sum(r["source"] == "wiki" for r in rows) == N and len({r["id"] for r in rows}) == len(rows)
    assert live_wiki_docs(tmp_path / "lake") == N

    # 5. One file changes: only it is ingested, and its old version stops counting.
    write_jsonl(tmp_path / "data" / "wiki-b.jsonl", docs[N:N + 100])
    night = run_pipeline(str(pipeline(tmp_path, "body")))
    assert {i["source"]: i["files"] for i in night["ingest"]} == {"wiki": 1, "fr": 0}
    wiki = [r for r in released(night["release"]) if r["source"] == "wiki"]
    assert sorted(r["text"] for r in wiki) == sorted(d["body"] for d in docs[:N // 2] + docs[N:N + 100])
    assert live_wiki_docs(tmp_path / "lake") == N // 2 + 100


# --- planning, without Prefect ------------------------------------------------------------------

def _cfg(root: Path, **source) -> PipelineConfig:
    src = {"name": "s", "format": "jsonl", "paths": ["data/*.jsonl"], **source}
    return PipelineConfig.model_validate({"name": "t", "lake": str(root / "lake"), "sources": [src],
                                          "release": {"name": "r"}, "base_dir": str(root)})


def _complete(lake: Lake, tasks) -> None:
    """Write the markers an ingest of these tasks would write (no rows: planning only reads markers)."""
    for t in tasks:
        done = Path(t.out_dir) / "_done"
        done.mkdir(parents=True, exist_ok=True)
        (done / f"{t.file_index:05d}.json").write_text(json.dumps({
            "source": t.source.name, "file": t.file, "file_index": t.file_index, "fingerprint": t.fingerprint,
            "ingest_run": t.ingest_run, "parts": [], "rows_in": 0, "rows_written": 0, "rows_quarantined": 0,
            "supersedes": list(t.supersedes), "reader": reader_config(t.source)}))


def test_path_matching_nothing_is_an_error_unless_optional(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(SourceMatchError, match="nothing matches data/\\*.jsonl .*optional: true"):
        plan_source_ingest(cfg, Lake(cfg.lake_path), cfg.sources[0], "run-1", "0")
    cfg = _cfg(tmp_path, optional=True)
    warned: list[str] = []
    assert plan_source_ingest(cfg, Lake(cfg.lake_path), cfg.sources[0], "run-1", "0", warn=warned.append) == []
    assert len(warned) == 1 and "optional" in warned[0]


def test_reader_config_is_part_of_the_fingerprint(tmp_path):
    (tmp_path / "data").mkdir()
    f = tmp_path / "data" / "a.jsonl"
    f.write_text('{"body": "x"}\n')
    a = SourceConfig(name="s", format="jsonl", paths=["x"])
    changed = [SourceConfig(name="s", format="jsonl", paths=["x"], columns={"text": "body"}),
               SourceConfig(name="s", format="jsonl", paths=["x"], max_doc_bytes=10),
               SourceConfig(name="s", format="jsonl", paths=["x"], license="CC0"),
               SourceConfig(name="s", format="hf", paths=["x"], hf_builder="json")]
    same = [SourceConfig(name="s", format="jsonl", paths=["other/*"], optional=True),
            SourceConfig(name="renamed", format="jsonl", paths=["x"]),
            SourceConfig(name="s", format="jsonl", paths=["x"], max_doc_bytes=64 * 1024 * 1024)]  # the default
    base = file_fingerprint(str(f), a)["fingerprint"]
    assert all(file_fingerprint(str(f), s)["fingerprint"] != base for s in changed)
    assert all(file_fingerprint(str(f), s)["fingerprint"] == base for s in same)


def test_supersede_chain_and_revert(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a", "b"):
        (tmp_path / "data" / f"{name}.jsonl").write_text('{"text": "x"}\n')
    wrong, right = _cfg(tmp_path, columns={"text": "body"}), _cfg(tmp_path)
    lake = Lake(wrong.lake_path)

    first = plan_source_ingest(wrong, lake, wrong.sources[0], "run-1", "0")
    assert [t.supersedes for t in first] == [(), ()]
    _complete(lake, first)
    assert plan_source_ingest(wrong, lake, wrong.sources[0], "run-2", "0") == []

    second = plan_source_ingest(right, lake, right.sources[0], "run-3", "0", warn=lambda m: None)
    assert [t.supersedes for t in second] == [(f"{first[0].ingest_run}/00000",), (f"{first[0].ingest_run}/00001",)]
    _complete(lake, second)
    assert {m["ingest_run"] for m in lake.ingest_markers("s")} == {second[0].ingest_run}

    # Reverting to the first config ingests once more, into a new run folder (not the superseded one).
    third = plan_source_ingest(wrong, lake, wrong.sources[0], "run-4", "0", warn=lambda m: None)
    assert third and third[0].ingest_run not in (first[0].ingest_run, second[0].ingest_run)
    _complete(lake, third)
    live = lake.ingest_markers("s")
    assert len(live) == 2 and {m["ingest_run"] for m in live} == {third[0].ingest_run}
    assert len(lake.ingest_markers("s", superseded=True)) == 6

    # --reingest also replaces ingests of files the paths no longer match.
    (tmp_path / "data" / "b.jsonl").unlink()
    fresh = plan_source_ingest(wrong, lake, wrong.sources[0], "run-5", "0", reingest=True, warn=lambda m: None)
    assert len(fresh) == 1 and sorted(fresh[0].supersedes) == [f"{third[0].ingest_run}/0000{i}" for i in (0, 1)]
    _complete(lake, fresh)
    assert [m["file"] for m in lake.ingest_markers("s")] == [str(tmp_path / "data" / "a.jsonl")]


def test_cli_reingest_unknown_source_fails_fast(tmp_path):
    import subprocess
    import sys
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "wiki-a.jsonl", [{"body": "x", "link": "u"}])
    (tmp_path / "data" / "fr.parquet").write_bytes(b"")
    p = pipeline(tmp_path, "body")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(p), "--reingest", "wikki"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--reingest wikki: no source of that name; did you mean 'wiki'?" in out.stderr
