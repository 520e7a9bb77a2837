"""Two real `curate run` processes on one lake: one waits or exits cleanly naming the holder, the
other completes, and the catalog is complete afterwards; readers never see a lock traceback
while a run writes; a SIGKILLed run's lock is taken over and the run is marked failed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import LIGHT_KINDS, cli_env, demo_config
from warehouse.health import check_lake

pytestmark = pytest.mark.slow


def _pipeline(root: Path, demo_dir: Path, slow_s: float = 0.0) -> Path:
    cfg = demo_config(demo_dir, root / "lake", drop_kinds=LIGHT_KINDS)
    cfg["executor"] = {"workers": 2, "batch_rows": 256, "shard_bytes": 300_000}
    if slow_s:
        cfg["stages"].append({"name": "slow", "kind": "test_slow_words", "params": {"seconds_per_batch": slow_s}})
    root.mkdir(parents=True, exist_ok=True)
    (root / "p.yaml").write_text(yaml.safe_dump(cfg))
    return root / "p.yaml"


def _cli(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=cli_env(root), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _catalog_matches_lake(lake: Path) -> None:
    """Every fact the lake holds is in the catalog: ingested files, shards, the release's tables, artifacts."""
    markers = [json.loads(p.read_text()) for p in lake.glob("raw/*/*/_done/*.json")]
    [mdir] = [p.parent for p in lake.glob("releases/*/*/manifest.json") if not p.parent.name.startswith(".")]
    manifest = json.loads((mdir / "manifest.json").read_text())
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        one = lambda sql, *p: con.execute(sql, list(p)).fetchone()[0]  # noqa: E731
        assert one("SELECT count(*) FROM ingested_files") == len(markers) > 0
        assert one("SELECT count(*) FROM shards") == sum(len(m["parts"]) for m in markers)
        key = (manifest["name"], manifest["version"])
        assert one("SELECT count(*) FROM releases WHERE name=? AND version=?", *key) == 1
        assert one("SELECT count(*) FROM release_sources WHERE name=? AND version=?", *key) == len(manifest["sources"])
        assert one("SELECT count(*) FROM drop_reasons WHERE name=? AND version=?", *key) == len(manifest["drop_reasons"])
        n_mix = sum(len(ph["weights"]) for ph in manifest["mixture"]["phases"])
        assert one("SELECT count(*) FROM release_mixture WHERE name=? AND version=?", *key) == n_mix > 0
        # Pinned fits keep _fit.json at artifacts/<key>/, incremental ones at artifacts/<key>/s-<hash>/.
        fits = {p.relative_to(lake / "artifacts").parts[0] for p in lake.glob("artifacts/**/_fit.json")}
        assert one("SELECT count(DISTINCT stage_key) FROM artifacts") == len(fits) > 0
        assert one("SELECT count(*) FROM runs WHERE status='running'") == 0
    finally:
        con.close()
    assert [f for f in check_lake(str(lake)) if f.kind.startswith("catalog")] == []


def test_two_runs_at_once_one_exits_cleanly_and_readers_see_no_traceback(tmp_path, demo_dir):
    pipeline = _pipeline(tmp_path, demo_dir)
    lake = tmp_path / "lake"
    first, second = _cli(tmp_path, "run", str(pipeline)), _cli(tmp_path, "run", str(pipeline))
    # While they run, readers poll the catalog: a short message at worst, never a lock traceback.
    reader_outputs = []
    while first.poll() is None or second.poll() is None:
        if (lake / "catalog.duckdb").exists():
            for args in (("stats", "--lake", str(lake)), ("releases", "--lake", str(lake)),
                         ("sql", "SELECT count(*) FROM stage_runs", "--lake", str(lake))):
                r = _cli(tmp_path, *args)
                out, _ = r.communicate(timeout=300)
                reader_outputs.append((args[0], r.returncode, out))
        time.sleep(0.5)
    out1, out2 = first.communicate()[0], second.communicate()[0]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 75], (out1[-3000:], out2[-3000:])
    loser = out1 if first.returncode == 75 else out2
    assert "is locked by run" in loser and socket.gethostname() in loser and "pid" in loser and "since" in loser
    assert "Traceback" not in loser and len(loser.strip().splitlines()) <= 3
    assert reader_outputs, "the readers never ran during the run"
    for name, code, out in reader_outputs:
        assert "Traceback" not in out and "Could not set lock" not in out, (name, out[-2000:])
        assert code in (0, 75), (name, code, out[-1000:])
    _catalog_matches_lake(lake)

    # With --wait, the second run waits for the first and then finds nothing new to do.
    a = _cli(tmp_path, "run", str(pipeline), "--wait", "900")
    b = _cli(tmp_path, "run", str(pipeline), "--wait", "900")
    outs = [p.communicate(timeout=1200)[0] for p in (a, b)]
    assert [a.returncode, b.returncode] == [0, 0], [o[-3000:] for o in outs]
    assert any("waiting for the lake lock" in o for o in outs)
    _catalog_matches_lake(lake)
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT status, count(*) FROM runs GROUP BY ALL").fetchall() == [("completed", 3)]
    con.close()


def test_a_killed_run_is_taken_over_and_marked_failed(tmp_path, demo_dir):
    pipeline = _pipeline(tmp_path, demo_dir, slow_s=0.2)
    lake = tmp_path / "lake"
    proc = _cli(tmp_path, "run", str(pipeline))
    deadline = time.time() + 600
    while not list(lake.glob("annotations/slow@*/*/*/part-*.parquet")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # A temporary of an interrupted write, as a kill mid-write leaves one.
    leftover = lake / "raw" / ".tmp-12345-deadbeef-part-00000-000.parquet"
    leftover.write_bytes(b"half a file")
    killed_run = json.loads(next(lake.glob("runs/*.json")).read_text())
    assert killed_run["status"] == "running"

    again = _cli(tmp_path, "run", str(pipeline))
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    assert not leftover.exists()
    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    status, message = con.execute("SELECT status, message FROM runs WHERE run_id=?", [killed_run["run_id"]]).fetchone()
    assert status == "failed" and message.startswith("killed")
    assert con.execute("SELECT count(*) FROM runs WHERE status='completed'").fetchone()[0] == 1
    con.close()
    # The lake's own run record says the same, so a rebuilt catalog would too.
    assert json.loads((lake / "runs" / f"{killed_run['run_id']}.json").read_text())["status"] == "failed"
    _catalog_matches_lake(lake)
