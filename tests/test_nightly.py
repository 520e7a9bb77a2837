"""Night after night through real `curate run`s: pinned models, incremental dedup, a bounded lake,
`--refit`, a parameter change, and `curate gc`.

One lake goes through the nights in order (the tests of this module build on each other, like a
nightly job): three nights with new input files each (real Wikipedia text, with planted exact
and near copies of earlier nights' documents), then `--refit quality`, then a parameter change,
then a run that fails half-way and a run killed in a fit, whose leftovers `curate gc` removes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import REPO

pytestmark = pytest.mark.slow

ROWS_PER_NIGHT = {"wiki": 250, "fr": 150}


def _pipeline(root: Path, quality_epoch: int = 3, extra_stages: list[dict] | None = None,
              min_words: int = 5) -> dict:
    return {
        "name": "nightly", "lake": "lake",
        "executor": {"kind": "local", "workers": 1, "batch_rows": 256, "shard_bytes": 4_000_000},
        "sources": [
            {"name": "wiki", "format": "parquet", "paths": ["data/wiki_*.parquet"],
             "columns": {"text": "text", "id": "url", "url": "url"}},
            {"name": "fr", "format": "parquet", "paths": ["data/fr_*.parquet"],
             "columns": {"text": "text", "id": "url", "url": "url"}},
        ],
        "stages": [
            {"name": "length", "kind": "length_filter", "params": {"min_words": min_words}},
            {"name": "dedup", "kind": "exact_dedup"},
            {"name": "minhash", "kind": "minhash_signatures", "params": {"bands": 20, "rows": 5}},
            {"name": "fuzzy", "kind": "minhash_dedup", "params": {"threshold": 0.8}},
            {"name": "decontam", "kind": "decontaminate",
             "params": {"benchmarks": [{"name": "quiz", "path": "bench.jsonl", "text_field": "question",
                                        "id_field": "id"}]}},
            {"name": "quality", "kind": "fasttext_quality",
             "params": {"positive": ["wiki"], "negative": ["fr"], "buckets": 4, "epoch": quality_epoch,
                        "max_per_class": 400, "calibration_sample": 400,
                        "quantize_cutoff": 10_000}},  # still quantised: ~5 s a fit, not ~22 s
            # Reads the pinned classifier's buckets: its key must stay put too.
            {"name": "ensemble", "kind": "score_ensemble", "inputs": {"q": "quality.bucket", "r": "quality.bucket"},
             "params": {"columns": ["q", "r"], "combine": "max"}},
            *(extra_stages or []),
        ],
        "release": {"name": "nightly", "select": "length.keep and dedup.keep and fuzzy.keep and decontam.keep",
                    "seed": 0, "shard_rows": 400},
    }


def _write(root: Path, cfg: dict) -> Path:
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return root / "pipeline.yaml"


def _near(text: str) -> str:
    words = text.split()
    return " ".join(w + "x" if i == 7 else w for i, w in enumerate(words))


def _night_files(root: Path, corpora: Path, night: int) -> dict[str, list[dict]]:
    """Write data/wiki_<night>.parquet and data/fr_<night>.parquet; returns the planted copies."""
    wiki = pq.read_table(corpora / "wiki_en.parquet", columns=["text", "url"]).to_pylist()
    fr = pq.read_table(corpora / "wiki_fr.parquet", columns=["text", "url"]).to_pylist()
    wiki = [r for r in wiki if len(r["text"].split()) >= 40]
    n, m = ROWS_PER_NIGHT["wiki"], ROWS_PER_NIGHT["fr"]
    rows = wiki[(night - 1) * n: night * n]
    planted: dict[str, list[dict]] = {"exact": [], "near": []}
    if night > 1:  # copies of the previous night's documents, under new urls
        prev = wiki[(night - 2) * n: (night - 1) * n]
        for r in prev[3:5]:
            planted["exact"].append({"text": r["text"], "url": r["url"] + "#copy", "of": r["url"]})
        # Near copies of long documents (one word changed: 5-gram Jaccard > 0.9).
        for r in [r for r in prev[5:100] if len(r["text"].split()) >= 150][:2]:
            planted["near"].append({"text": _near(r["text"]), "url": r["url"] + "#near", "of": r["url"]})
    rows = rows + [{"text": r["text"], "url": r["url"]} for r in planted["exact"] + planted["near"]]
    (root / "data").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"wiki_{night}.parquet")
    pq.write_table(pa.Table.from_pylist(fr[(night - 1) * m: night * m]), root / "data" / f"fr_{night}.parquet")
    return planted


def _sizes(lake: Path) -> dict[str, int]:
    out = {}
    for top in ("raw", "annotations", "artifacts", "pins", "releases"):
        out[top] = sum(p.stat().st_size for p in (lake / top).rglob("*") if p.is_file())
    return out


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _curate(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def _pin(lake: Path, stage: str) -> dict:
    [p] = [json.loads(f.read_text()) for f in (lake / "pins").glob(f"{stage}@*.json")
           if json.loads(f.read_text()).get("stage") == stage and _is_current(lake, f)]
    return p


def _is_current(lake: Path, pin_file: Path) -> bool:
    keys = _last_keys(lake)
    return json.loads(pin_file.read_text())["fit_key"] in keys.values()


def _last_keys(lake: Path) -> dict[str, str]:
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        run = con.execute("SELECT run_id FROM runs WHERE status = 'completed' ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        return dict(con.execute("SELECT DISTINCT stage, stage_key FROM stage_runs WHERE run_id = ?", [run]).fetchall())
    finally:
        con.close()


def _manifest(lake: Path) -> dict:
    version = (lake / "releases" / "nightly" / "LATEST").read_text().strip()
    return json.loads((lake / "releases" / "nightly" / version / "manifest.json").read_text())


@pytest.fixture(scope="module")
def nights(tmp_path_factory, corpora):
    """Three nightly `curate run`s, each after new input files arrived."""
    root = tmp_path_factory.mktemp("nightly")
    wiki = [r for r in pq.read_table(corpora / "wiki_en.parquet", columns=["text"]).column("text").to_pylist()
            if len(r.split()) >= 40]
    # The benchmark quotes a passage of a night-2 document: the pinned index must catch it there.
    quote = " ".join(wiki[ROWS_PER_NIGHT["wiki"] + 150].split()[5:30])
    (root / "bench.jsonl").write_text(json.dumps({"id": "q1", "question": f"What is meant here? {quote}"}) + "\n")
    pipeline = _write(root, _pipeline(root))
    lake = root / "lake"
    out = {"root": root, "lake": lake, "pipeline": pipeline, "planted": {}, "sizes": [], "manifests": [],
           "quality_files": [], "annotation_hashes": [], "outputs": []}
    for night in (1, 2, 3):
        out["planted"][night] = _night_files(root, corpora, night)
        out["outputs"].append(_curate("run", str(pipeline)))
        out["sizes"].append(_sizes(lake))
        out["manifests"].append(_manifest(lake))
        pin = _pin(lake, "quality")
        out["quality_files"].append((pin["artifact"], _files(lake / pin["artifact"])))
        out["annotation_hashes"].append(_files(lake / "annotations"))
    return out


def test_each_release_parent_is_the_previous_one(nights):
    m1, m2, m3 = nights["manifests"]
    assert m1["parent"] is None and m2["parent"] == m1["version"] and m3["parent"] == m2["version"]
    assert m1["totals"]["rows"] < m2["totals"]["rows"] < m3["totals"]["rows"]


def test_classifier_stays_pinned_and_old_scores_stay(nights):
    (a1, f1), (a2, f2), (a3, f3) = nights["quality_files"]
    assert a1 == a2 == a3 and f1 == f2 == f3, "the quality model is fitted once and kept byte for byte"
    assert "model.ftz" in f1
    # Every annotation file written on an earlier night is still there, byte for byte.
    h1, h2, h3 = nights["annotation_hashes"]
    assert h1.items() <= h2.items() and h2.items() <= h3.items()
    lake = nights["lake"]
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    runs = [r for (r,) in con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]
    per_night = [dict(con.execute("SELECT stage, sum((status='computed')::INT) FROM stage_runs WHERE run_id=? "
                                  "AND phase = 'apply' GROUP BY stage", [r]).fetchall()) for r in runs]
    pins = con.execute("SELECT stage, count(*) FROM pins WHERE policy='pinned' GROUP BY stage").fetchall()
    # The fit of each global stage is a stage_runs row too (phase fit, no shard): fitted on night 1,
    # the pinned classifier reused after.
    fits = [dict(con.execute("SELECT stage, status FROM stage_runs WHERE run_id=? AND phase = 'fit' AND shard IS NULL",
                             [r]).fetchall()) for r in runs]
    con.close()
    assert [f["quality"] for f in fits] == ["computed", "reused", "reused"] and fits[0]["dedup"] == "computed"
    new_shards = 2  # one wiki file and one fr file per night
    for counts in per_night[1:]:
        assert all(counts[s] == new_shards for s in ("quality", "ensemble", "dedup", "fuzzy", "decontam", "length")), counts
    assert dict(pins) == {"quality": 1, "decontam": 1}
    pin = _pin(lake, "quality")
    assert pin["trained_on"]["shards"] == 2 and pin["history"] == [] and pin["reason"] == "first fit"


def test_new_documents_that_copy_old_ones_are_dropped_naming_the_survivor(nights):
    lake = nights["lake"]
    con = duckdb.connect()
    keys = _last_keys(lake)
    ann = {}
    for stage in ("dedup", "fuzzy", "decontam"):
        rows = con.execute(
            f"SELECT r.url, r.id, a.keep, a.reason, a.* EXCLUDE (keep, reason) FROM read_parquet('{lake}/raw/*/*/*.parquet', "
            f"filename=true, file_row_number=true) r JOIN read_parquet('{lake}/annotations/{keys[stage]}/*/*/*.parquet', "
            f"filename=true, file_row_number=true) a ON replace(a.filename, '/annotations/{keys[stage]}/', '/raw/') = r.filename "
            "AND a.file_row_number = r.file_row_number").fetchall()
        ann[stage] = {r[0]: r for r in rows}
    id_of = {url: r[1] for url, r in ann["dedup"].items()}
    for night in (2, 3):
        for p in nights["planted"][night]["exact"]:
            row = ann["dedup"][p["url"]]
            assert row[2] is False and row[3] == "exact_duplicate" and id_of[p["of"]] in row
            assert ann["dedup"][p["of"]][2] is True
        for p in nights["planted"][night]["near"]:
            row = ann["fuzzy"][p["url"]]
            assert row[2] is False and row[3] == "near_duplicate" and id_of[p["of"]] in row
    flagged = [u for u, r in ann["decontam"].items() if r[2] is False]
    assert len(flagged) == 1 and flagged[0] in {r["url"] for r in pq.read_table(nights["root"] / "data" / "wiki_2.parquet").to_pylist()}


def test_lake_stays_bounded(nights):
    """The bound: from one night to the next, what the pipeline derives (annotations, artifacts,
    pins) grows by at most 1.5x the first night's derived bytes per raw byte, less the pinned
    model, times the raw bytes the night added. So the growth is proportional to the new
    input alone: no model per night (the classifier is pinned, stored quantised), no
    re-annotation of old shards (incremental indexes, stable keys), no superseded index
    states. Releases are not bounded here: each version is a full, immutable copy a trainer
    reads (their number is the user's choice)."""
    s = nights["sizes"]
    model = sum((nights["lake"] / nights["quality_files"][0][0] / f).stat().st_size
                for f in nights["quality_files"][0][1])
    derived = [x["annotations"] + x["artifacts"] + x["pins"] for x in s]
    per_raw = (derived[0] - model) / s[0]["raw"]
    print("lake bytes per night:", json.dumps(s), "derived:", derived, "model:", model)  # shown with -rP
    for k in (1, 2):
        grew, raw_added = derived[k] - derived[k - 1], s[k]["raw"] - s[k - 1]["raw"]
        assert 0 < grew <= 1.5 * per_raw * raw_added, (k, grew, raw_added, per_raw, s)
    # One artifact folder per global stage, whatever the number of nights.
    assert len(list((nights["lake"] / "artifacts").iterdir())) == 4
    # And the model is small: quantised, not the 531 MB float matrix of a 2M-bucket model.
    assert model < 20_000_000


def test_refit_retrains_and_reannotates(nights):
    lake, pipeline = nights["lake"], nights["pipeline"]
    before = _pin(lake, "quality")
    _curate("run", str(pipeline), "--refit", "quality")
    after = _pin(lake, "quality")
    assert after["fit_key"] != before["fit_key"] and after["reason"] == "refit requested"
    assert after["history"][-1]["artifact"] == before["artifact"] and after["trained_on"]["shards"] == 6
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    run = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    counts = dict(con.execute("SELECT stage, sum((status='computed')::INT) FROM stage_runs WHERE run_id=? "
                              "AND phase = 'apply' GROUP BY stage",
                              [run]).fetchall())
    con.close()
    assert counts["quality"] == counts["ensemble"] == 6 and counts["dedup"] == counts["length"] == 0
    assert (lake / before["artifact"]).exists(), "the old model stays: earlier releases were scored by it"
    res = CliRunner().invoke(app, ["run", str(pipeline), "--refit", "length"])
    assert res.exit_code == 2 and "not a global stage" in res.output


def test_parameter_change_retrains(nights):
    lake, root = nights["lake"], nights["root"]
    before = _pin(lake, "quality")
    _curate("run", str(_write(root, _pipeline(root, quality_epoch=4))))
    after = _pin(lake, "quality")
    assert after["stage_key"] != before["stage_key"] and after["reason"] == "first fit"
    assert _files(lake / after["artifact"]) != _files(lake / before["artifact"])


def _jsonl(folder: Path) -> dict[str, str]:
    return {k: v for k, v in _files(folder).items() if k.endswith(".jsonl")}


def test_gc_removes_only_unreferenced_files(nights, corpora):
    lake, root = nights["lake"], nights["root"]
    cfg = _pipeline(root, quality_epoch=4)
    # A run with new length parameters and a stage whose benchmark file is not JSON: it annotates
    # every shard for the new length key, then fails; no release refers to those annotations.
    (root / "broken.jsonl").write_text("this is not JSON\n")
    broken = _pipeline(root, quality_epoch=4, min_words=7, extra_stages=[
        {"name": "bench2", "kind": "decontaminate",
         "params": {"benchmarks": [{"name": "x", "path": "broken.jsonl", "text_field": "question"}]}}])
    res = CliRunner().invoke(app, ["run", str(_write(root, broken))])
    assert res.exit_code != 0
    orphan = {p.name for p in (lake / "annotations").glob("length@*")} - set(_last_keys(lake).values())
    assert len(orphan) == 1
    # Night 4 arrives, and its run is killed in the middle of extending the dedup index (after
    # the fit, before the new state is renamed into place).
    planted = _night_files(root, corpora, 4)
    pipeline = _write(root, cfg)
    env = dict(os.environ, CURATE_FAULT="fit:before-rename", PYTHONPATH=str(REPO), CURATE_PROGRESS="0",
               PREFECT_HOME=str(root / "prefect-killed"))
    env.pop("PREFECT_API_URL", None)
    with open(root / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=900)
        finally:  # the killed run's helpers (Prefect's temporary server) go with it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == -9, (root / "killed.log").read_text()[-3000:]
    unfinished = [str(p.relative_to(lake)) for p in (lake / "artifacts").rglob("*.tmp-*") if p.is_dir()]
    assert len(unfinished) == 1 and "dedup@" in unfinished[0]

    everything = _files(lake)
    dry = _curate("gc", str(pipeline))
    assert "dry run" in dry and _files(lake) == everything, "a dry run deletes nothing"
    _curate("export", "nightly", "--format", "jsonl", "--lake", str(lake), "--out", str(root / "e1"))
    _curate("gc", str(pipeline), "--yes")
    [record] = [json.loads(p.read_text()) for p in (lake / "gc").glob("*.json")]
    removed = {r["path"] for r in record["removed"]}
    assert removed == {f"annotations/{orphan.pop()}", unfinished[0]}, removed
    assert record["status"] == "done" and record["bytes"] > 0
    gone = {p for p in everything if any(p.startswith(r + "/") or p == r for r in removed)}
    # The lake lock's records turn over with every writer (gc holds the lock too): not data.
    lost = {p for p in set(everything) - set(_files(lake)) if not p.startswith("_lock/")}
    assert lost == gone, "only the listed folders went"
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), sum(bytes) FROM gc_removed").fetchone() == (2, record["bytes"])
    con.close()
    # The latest release still exports, identically, and so does every earlier one.
    _curate("export", "nightly", "--format", "jsonl", "--lake", str(lake), "--out", str(root / "e2"))
    assert _jsonl(root / "e1") == _jsonl(root / "e2") and _jsonl(root / "e1")
    for m in (lake / "releases" / "nightly").glob("*/manifest.json"):
        _curate("export", f"nightly/{m.parent.name}", "--format", "jsonl", "--lake", str(lake),
                "--out", str(root / "exports" / m.parent.name))
    # The run after the crash finishes night 4: the index is extended once, the copies found.
    parent = _manifest(lake)["version"]
    _curate("run", str(pipeline))
    assert _manifest(lake)["parent"] == parent
    keys = _last_keys(lake)
    con = duckdb.connect()
    dropped = dict(con.execute(
        f"SELECT r.url, a.survivor_id FROM read_parquet('{lake}/raw/wiki/*/*.parquet', filename=true, file_row_number=true) r "
        f"JOIN read_parquet('{lake}/annotations/{keys['dedup']}/wiki/*/*.parquet', filename=true, file_row_number=true) a "
        f"ON replace(a.filename, '/annotations/{keys['dedup']}/', '/raw/') = r.filename "
        "AND a.file_row_number = r.file_row_number WHERE NOT a.keep").fetchall())
    assert {p["url"] for p in planted["exact"]} <= set(dropped)
    assert "nothing to remove" in _curate("gc", str(pipeline))
