"""SIGKILL in the middle of a stage, run again: the same release, no duplicate rows, and
nothing recomputed that had completed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import LIGHT_KINDS, cli_env, demo_config

pytestmark = pytest.mark.slow


def _pipeline(root: Path, demo_dir: Path) -> Path:
    cfg = demo_config(demo_dir, root / "lake", drop_kinds=LIGHT_KINDS)
    cfg["executor"] = {"workers": 2, "batch_rows": 64, "shard_bytes": 300_000}
    cfg["stages"].append({"name": "slow", "kind": "test_slow_words", "params": {"seconds_per_batch": 0.25}})
    cfg["release"]["select"] += " and slow.words > 0"
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


def _env(root: Path) -> dict[str, str]:
    # A temporary folder of the run's own, to see what a killed run leaves there.
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return cli_env(root) | {"TMPDIR": str(root / "tmp")}


def _run(pipeline: Path, root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=REPO, env=_env(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _manifest(lake: Path) -> dict:
    [m] = list((lake / "releases" / "demo").glob("*/manifest.json"))
    return json.loads(m.read_text())


def test_sigkill_mid_stage_then_rerun(tmp_path, demo_dir):
    # Reference: an uninterrupted run in a lake of its own.
    ref = _run(_pipeline(tmp_path / "ref", demo_dir), tmp_path / "ref")
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out.decode()[-3000:]
    reference = _manifest(tmp_path / "ref" / "lake")

    root = tmp_path / "crash"
    pipeline = _pipeline(root, demo_dir)
    lake = root / "lake"
    proc = _run(pipeline, root)
    ann_glob = "annotations/slow@*/*/*/part-*.parquet"
    deadline = time.time() + 300
    while time.time() < deadline:
        done = list(lake.glob(ann_glob))
        if len(done) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The killed run's Prefect server log stays behind (empty: the server had nothing to say) ...
    assert [p.name for p in (root / "tmp").glob("curate-prefect-server-*.log")] == \
        [p.name for p in (root / "tmp").glob(f"curate-prefect-server-{proc.pid}-*.log")] != []
    n_shards = sum(len(json.loads(m.read_text())["parts"]) for m in lake.glob("raw/*/*/_done/*.json"))
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in lake.glob(ann_glob)}
    assert 2 <= len(before) < n_shards, "the kill must land while the slow stage is half done"
    assert not list((lake / "releases").glob("demo/*/manifest.json"))

    again = _run(pipeline, root)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out.decode()[-3000:]
    # ... until the next run, which deletes it (and its own, being empty, at its end).
    assert not list((root / "tmp").glob("curate-prefect-server-*.log"))
    # Finished shards were not recomputed: same files, untouched.
    for p, stamp in before.items():
        assert (p.stat().st_mtime_ns, p.stat().st_ino) == stamp
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    last = con.execute("SELECT run_id FROM runs WHERE status='completed'").fetchall()
    assert len(last) == 1
    skipped = {r[0] for r in con.execute(
        "SELECT shard FROM stage_runs WHERE stage='slow' AND status='skipped' AND run_id=?", [last[0][0]]).fetchall()}
    assert {str(p).replace(f"annotations/{p.parts[-4]}/", "raw/") for p in before} <= skipped
    # Same release as the uninterrupted run, byte for byte, and no duplicated rows.
    got = _manifest(lake)
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert got["totals"] == reference["totals"] and got["sources"] == reference["sources"]
    # No row was written twice by the resumed run: repeats are only the planned ones (at most
    # max_epochs=2 copies of a document), exactly as in the uninterrupted run.
    per_doc = "SELECT src_file, src_offset, count(*) AS n FROM release_shards GROUP BY ALL"
    got_copies = sorted(con.execute(per_doc).fetchall())
    ref_con = duckdb.connect(str(tmp_path / "ref" / "lake" / "catalog.duckdb"), read_only=True)
    assert got_copies == sorted(ref_con.execute(per_doc).fetchall())
    assert max(n for _, _, n in got_copies) <= 2
    ref_con.close()
    con.close()
