"""SIGKILL a real ``curate run`` at each named step of the release, then run again: the same release
as an uninterrupted run, LATEST right (and never stale for readers in between), no leftovers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO
from warehouse.releasing import publish

pytestmark = pytest.mark.slow

POINTS = ["release:prepared", "release:staged", "release:shard_written", "release:shards_written",
          "release:manifest_written", "release:latest_written"]


def _config(root: Path, corpora: Path, seed: int) -> Path:
    data = root.parent / "input"
    if not data.exists():
        data.mkdir(parents=True)
        for name, n in (("wiki_en", 300), ("wiki_es", 200)):
            rows = pq.read_table(corpora / f"{name}.parquet", columns=["url", "text"]).slice(0, n).to_pylist()
            (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "faults", "lake": str(root / "lake"), "executor": {"workers": 1, "batch_rows": 256},
        "sources": [{"name": s, "format": "jsonl", "paths": [str(data / f"{s}.jsonl")],
                     "columns": {"text": "text", "id": "url", "url": "url"}} for s in ("wiki_en", "wiki_es")],
        "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 15}},
                   {"name": "pii", "kind": "pii"}, {"name": "dedup", "kind": "exact_dedup"}],
        "release": {"name": "faults", "select": "length.keep and dedup.keep", "seed": seed, "shard_rows": 60,
                    "text": ["pii.text_redacted"],
                    "mixture": {"method": "unimax", "max_epochs": 2}},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


def _run(pipeline: Path, fault: str | None = None) -> tuple[int, str]:
    """``curate run`` in a session of its own; returns (exit status, output). After a SIGKILL the
    helpers it started (Prefect's temporary server) are orphans: they are killed with the session."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CURATE_PROGRESS="0", PREFECT_HOME=str(pipeline.parent / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    env.pop("CURATE_FAULT", None)
    if fault:
        env["CURATE_FAULT"] = fault
    log = pipeline.parent / f"run-{fault or 'clean'}.log".replace(":", "_")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code, log.read_text()[-4000:]


def _state(lake: Path) -> dict:
    root = lake / "releases" / "faults"
    version = (root / "LATEST").read_text().strip()
    manifest = json.loads((root / version / "manifest.json").read_text())
    return {"version": version, "entries": sorted(p.name for p in root.iterdir()),
            "files": sorted(p.name for p in (root / version).iterdir()),
            "shards": [s["sha256"] for s in manifest["shards"]], "totals": manifest["totals"],
            "sources": manifest["sources"], "parent": manifest["parent"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpora):
    """A lake with a first release (seed 0) and the reference second release (seed 1)."""
    root = tmp_path_factory.mktemp("faults")
    code, out = _run(_config(root / "base", corpora, seed=0))
    assert code == 0, out
    shutil.copytree(root / "base", root / "ref")
    code, out = _run(_config(root / "ref", corpora, seed=1))
    assert code == 0, out
    return root, _state(root / "ref" / "lake")


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_release_step_then_rerun(base, corpora, point):
    root, reference = base
    work = root / point.replace(":", "_")
    shutil.copytree(root / "base", work)
    pipeline = _config(work, corpora, seed=1)
    first_version = (work / "lake" / "releases" / "faults" / "LATEST").read_text().strip()
    code, out = _run(pipeline, fault=point)
    assert code == -signal.SIGKILL, f"{point} was not reached:\n{out}"
    lake = work / "lake"
    release_root = str(lake / "releases" / "faults")
    # Between the crash and the re-run, readers see either the old release or the whole new one.
    seen = publish.latest_version(release_root)
    committed = point in ("release:manifest_written", "release:latest_written")
    assert seen == (reference["version"] if committed else first_version)
    assert publish.resolve(str(lake), "faults").endswith("/" + seen)
    code, out = _run(pipeline)
    assert code == 0, out
    got = _state(lake)
    assert got == reference
    assert got["entries"] == sorted([first_version, reference["version"], "LATEST"])
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM releases WHERE version = ?", [got["version"]]).fetchone() == (1,)
        rows = con.execute("SELECT count(*) FROM release_shards WHERE filename LIKE ?",
                           [f"%/{got['version']}/%"]).fetchone()[0]
        assert rows == got["totals"]["rows"]
    finally:
        con.close()
