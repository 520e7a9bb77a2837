"""`curate run` starts Prefect's temporary server on its first line (flows/prefect_server.py,
launched by the entry point before the CLI's imports: flows/launch.py): only where Prefect would
start one anyway, a real server the flow reports to, gone at exit, also when the run fails."""
from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from flows.launch import is_run_command
from flows.prefect_server import prefect_would_start_one
from tests.conftest import REPO
from tests.helpers import cli_env


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PREFECT_HOME": str(tmp_path / "home"), **extra}


def test_only_where_prefect_would_start_a_temporary_server(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert prefect_would_start_one(_env(tmp_path), cwd)
    assert not prefect_would_start_one(_env(tmp_path, PREFECT_API_URL="http://127.0.0.1:4200/api"), cwd)
    assert not prefect_would_start_one(_env(tmp_path, PREFECT_API_KEY="k"), cwd)
    assert not prefect_would_start_one(_env(tmp_path, PREFECT_SERVER_EPHEMERAL_ENABLED="false"), cwd)
    assert not prefect_would_start_one(_env(tmp_path, CURATE_EARLY_PREFECT_SERVER="0"), cwd)
    # Prefect's own profiles file: the active profile decides, other profiles do not.
    home = tmp_path / "home"
    home.mkdir()
    profiles = home / "profiles.toml"
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n'
                        '[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert prefect_would_start_one(_env(tmp_path), cwd)
    assert not prefect_would_start_one(_env(tmp_path, PREFECT_PROFILE="local"), cwd)
    profiles.write_text(profiles.read_text().replace('active = "ephemeral"', 'active = "local"'))
    assert not prefect_would_start_one(_env(tmp_path), cwd)
    profiles.write_text("not [valid toml")
    assert not prefect_would_start_one(_env(tmp_path), cwd)  # unreadable: Prefect reads (and reports) it
    profiles.unlink()
    # Settings files in the working directory that may name an API.
    for name, text in ((".env", "PREFECT_API_URL=http://x/api\n"), ("prefect.toml", "[api]\n"),
                       ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://x/api'\n")):
        (cwd / name).write_text(text)
        assert not prefect_would_start_one(_env(tmp_path), cwd), name
        (cwd / name).unlink()
    (cwd / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert prefect_would_start_one(_env(tmp_path), cwd)


def _pipeline(tmp_path: Path, corpora: Path) -> Path:
    cfg = {"name": "early", "lake": str(tmp_path / "lake"), "executor": {"workers": 1},
           "sources": [{"name": "wiki_en", "format": "parquet", "paths": [str(corpora / "wiki_en.parquet")]}],
           "stages": [{"name": "length", "kind": "length_filter", "params": {"min_words": 30}}],
           "release": {"name": "rel", "select": "length.keep"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_curate_run_reports_to_the_server_it_started_early(tmp_path, corpora):
    pipeline = _pipeline(tmp_path, corpora)
    env = dict(cli_env(tmp_path), CURATE_STARTUP_TIMES="1")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("startup-times ")]
    times = json.loads(line.removeprefix("startup-times "))
    assert times["prefect_server"] == 1.0  # started early, not by Prefect
    assert times["prefect_launched"] < times["cli"]  # before the CLI's own imports (flows/launch.py)
    assert times["cli"] <= times["validated"] <= times["imported"] <= times["prefect_ready"] <= times["end"]
    assert _closed(int(times["prefect_port"]))  # stopped at exit
    assert "Starting temporary server" not in out.stdout + out.stderr  # Prefect did not start its own
    con = duckdb.connect(str(tmp_path / "lake" / "catalog.duckdb"), read_only=True)
    try:
        status, flow_run = con.execute("SELECT status, prefect_flow_run FROM runs").fetchone()
    finally:
        con.close()
    assert status == "completed" and flow_run  # a real Prefect flow run, recorded by that server
    # The same flow run, in Prefect's own database (PREFECT_HOME) that the server wrote.
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        state = db.execute("SELECT state_type FROM flow_run WHERE id = ?", [flow_run]).fetchone()
    assert state == ("COMPLETED",)


def test_only_curate_run_launches_the_server():
    assert is_run_command(["run", "p.yaml"]) and is_run_command(["run", "p.yaml", "--workers", "2"])
    assert not is_run_command(["run", "--help"]) and not is_run_command(["run", "p.yaml", "-h"])
    assert not is_run_command(["validate", "p.yaml"]) and not is_run_command([]) and not is_run_command(["stats"])


@pytest.mark.slow
def test_a_failed_run_stops_the_server_and_keeps_its_exit_code_and_message(tmp_path, corpora):
    """A pipeline that fails validation: the server launched on the first line is stopped, the
    command exits with validation's code 2 and its message (the fast exit flushes the output)."""
    pipeline = _pipeline(tmp_path, corpora)
    pipeline.write_text(pipeline.read_text().replace("length_filter", "no_such_stage"))
    env = dict(cli_env(tmp_path), CURATE_STARTUP_TIMES="1")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(pipeline)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no_such_stage" in out.stdout + out.stderr
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("startup-times ")]
    times = json.loads(line.removeprefix("startup-times "))
    assert times["prefect_server"] == 1.0 and _closed(int(times["prefect_port"]))


def _server_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private Prefect home for servers this test starts in-process (as cli_env gives subprocesses)."""
    home = tmp_path / "home"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return home


def test_a_server_that_cannot_start_is_retried_once_and_its_log_is_quoted(tmp_path, monkeypatch):
    # A database file that is not one: Prefect's server fails its start-up with a traceback. That
    # traceback goes to the server's log, not to curate's output; the error quotes its end.
    from flows.prefect_server import PrefectServerError, TemporaryServer
    home = _server_home(tmp_path, monkeypatch)
    home.mkdir()
    (home / "prefect.db").write_bytes((REPO / "demo" / "pipeline.yaml").read_bytes())
    server = TemporaryServer()
    try:
        with pytest.raises(PrefectServerError) as err:
            server.wait_ready(timeout_s=120)
    finally:
        server.stop()
    assert server.restarts == 1
    log = Path(server.log_path).read_text()
    assert log.count("Traceback") >= 2  # both starts failed, each wrote its traceback there
    message = str(err.value)
    assert "exited" in message and server.log_path in message and log.strip().splitlines()[-1] in message
    assert "prefect server start" in message  # and what to do
    Path(server.log_path).unlink()  # kept by design (it explains a failure); this one was planted


def test_two_servers_starting_at_once_on_a_fresh_home_both_answer(tmp_path, monkeypatch):
    # Two `curate run` at once on a fresh PREFECT_HOME: both servers create the database, and one
    # of them can fail a migration the other just made ("duplicate column name", seen in CI); it is
    # started again and finds the database made. Without the restart this fails in about half the runs.
    from flows.prefect_server import TemporaryServer
    _server_home(tmp_path, monkeypatch)
    servers = [TemporaryServer(), TemporaryServer()]
    try:
        for server in servers:
            server.wait_ready(timeout_s=180)
            assert server.ready_after is not None
    finally:
        for server in servers:
            server.stop()
            # The loser of the race keeps its log (its traceback): a planted failure, not left behind.
            Path(server.log_path).unlink(missing_ok=True)


def test_the_empty_logs_of_killed_runs_are_swept_and_nothing_else(tmp_path):
    # A process that is gone: its id names the logs a killed run would have left.
    from flows.prefect_server import LOG_PREFIX, sweep_stale_logs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead_empty": tmp_path / f"{LOG_PREFIX}{gone.pid}-a1b2.log",
            "dead_with_text": tmp_path / f"{LOG_PREFIX}{gone.pid}-c3d4.log",
            "live_empty": tmp_path / f"{LOG_PREFIX}{live.pid}-e5f6.log",
            "no_pid": tmp_path / f"{LOG_PREFIX}x7y8z9.log",  # the name before process ids
            "other": tmp_path / f"unrelated-{gone.pid}-a1b2.log",
        }
        for name, path in files.items():
            path.write_text("Traceback (most recent call last):\n" if name == "dead_with_text" else "")
        assert sweep_stale_logs(tmp_path) == [files["dead_empty"]]
        assert {n for n, p in files.items() if p.exists()} == set(files) - {"dead_empty"}
    finally:
        live.kill()
        live.wait()
