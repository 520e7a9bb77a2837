"""Lake order is defined by the input (ingest run, source order, input file, part), never by which
worker finished first; the dedup "first" rules follow it, so runs with 1 or 2 workers and delayed
files release byte-identical shards."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import make_lake, real_texts
from warehouse.lake import Lake


def _mark(root: Path, source: str, run: str, planned_at: str) -> None:
    Lake(str(root)).record_ingest_run(source, run, planned_at, "run-x")


def test_order_is_ingest_run_then_source_then_file(tmp_path, corpora):
    texts = real_texts(corpora, "wiki_en", 40)
    # Night 2 is written first and its markers claim earlier ingested_at times than night 1's:
    # only the planned time of each ingest run may decide.
    make_lake(tmp_path, {"web": [texts[0:5], texts[5:10]]}, ingest_run="ing-aaa", ingested_at="2026-01-01T00:00:00")
    make_lake(tmp_path, {"docs": [texts[10:15]]}, ingest_run="ing-bbb", ingested_at="2026-01-01T00:00:00")
    make_lake(tmp_path, {"docs": [texts[15:20]]}, ingest_run="ing-ccc", ingested_at="2025-12-31T00:00:00")
    _mark(tmp_path, "web", "ing-aaa", "2026-02-02T02:00:00")   # night 2
    _mark(tmp_path, "docs", "ing-bbb", "2026-02-02T02:00:00")  # night 2
    _mark(tmp_path, "docs", "ing-ccc", "2026-02-01T02:00:00")  # night 1
    lake = Lake(str(tmp_path))
    order = [(s, Path(p).parts[-2], Path(p).name) for s, p in lake.shards_by_age(["web", "docs"])]
    assert order == [("docs", "ing-ccc", "part-00000-000.parquet"),   # the older night first
                     ("web", "ing-aaa", "part-00000-000.parquet"),    # then pipeline source order
                     ("web", "ing-aaa", "part-00000-001.parquet"),
                     ("docs", "ing-bbb", "part-00000-000.parquet")]
    assert [Path(p).parts[-2] for p in lake.raw_shards("docs")] == ["ing-ccc", "ing-bbb"]


def test_first_record_of_an_ingest_run_is_kept(tmp_path):
    lake = Lake(str(tmp_path))
    lake.record_ingest_run("web", "ing-a", "2026-01-01T00:00:00", "run-1")
    lake.record_ingest_run("web", "ing-a", "2026-03-01T00:00:00", "run-2")  # a resumed run
    rec = json.loads((tmp_path / "raw" / "web" / "ing-a" / "_run.json").read_text())
    assert rec["planned_at"] == "2026-01-01T00:00:00" and rec["run_id"] == "run-1"


def _inputs(root: Path, corpora: Path) -> list[str]:
    """Three JSONL files of real text; file 2 repeats documents of files 0 and 1 (exact copies and
    near-copies under other ids), so which copy survives depends on lake order."""
    en = pq.read_table(corpora / "wiki_en.parquet", columns=["url", "text"]).slice(0, 900).to_pylist()
    files = [en[0:300], en[300:600], en[600:900]]
    dupes = [{"url": d["url"] + "#copy", "text": d["text"]} for d in en[0:40] + en[300:340]]
    near = [{"url": d["url"] + "#near", "text": d["text"] + " (reprinted)"} for d in en[100:130] + en[400:430]]
    files[2] = dupes + files[2] + near
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(files):
        path = root / f"part{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def _pipeline(root: Path, inputs: list[str]) -> Path:
    cfg = {
        "name": "order", "lake": str(root / "lake"),
        "executor": {"workers": 2, "batch_rows": 128, "shard_bytes": 60_000},
        "sources": [{"name": "wiki", "format": "jsonl", "paths": inputs, "columns": {"text": "text", "id": "url",
                                                                                     "url": "url"}}],
        "stages": [{"name": "dedup", "kind": "exact_dedup"},
                   {"name": "minhash", "kind": "minhash_signatures"},
                   {"name": "fuzzy", "kind": "minhash_dedup", "params": {"threshold": 0.8}}],
        "release": {"name": "order", "select": "dedup.keep and fuzzy.keep", "shard_rows": 200},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


@pytest.mark.slow
def test_same_release_with_one_or_two_workers_and_delays(tmp_path, corpora, monkeypatch):
    from flows.pipeline import run_pipeline
    inputs = _inputs(tmp_path / "input", corpora)
    one = run_pipeline(str(_pipeline(tmp_path / "one", inputs)), workers=1)
    # Two workers, and the first two files finish last: timing would put file 2 first.
    monkeypatch.setenv("CURATE_DELAY", "ingest:part0.jsonl=4,ingest:part1.jsonl=2")
    two = run_pipeline(str(_pipeline(tmp_path / "two", inputs)), workers=2)

    def shards(summary: dict) -> list[bytes]:
        d = Path(summary["release"]["path"])
        manifest = json.loads((d / "manifest.json").read_text())
        return [(d / s["file"]).read_bytes() for s in manifest["shards"]]
    assert one["release"]["rows"] == two["release"]["rows"] > 0
    assert shards(one) == shards(two)
    # The survivors are the copies in the earliest input file, whichever worker finished first.
    released = pa.concat_tables([pq.read_table(Path(two["release"]["path"]) / f"shard-{i:06d}.parquet")
                                 for i in range(two["release"]["shards"])])
    urls = set(released.column("url").to_pylist())
    assert not any(u.endswith(("#copy", "#near")) for u in urls)
    assert len(urls) == 900
