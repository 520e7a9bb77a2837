"""`curate serve` against a real local Prefect server: the deployment exists with its cron
schedule, runs are scheduled, and a triggered run of the served flow writes a release."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import LIGHT_KINDS, demo_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    import urllib.request
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, "prefect server exited early"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("prefect server did not become healthy")


def test_serve_schedules_and_runs(tmp_path, demo_dir):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(REPO), CURATE_PROGRESS="0")
    cfg = demo_config(demo_dir, tmp_path / "lake", drop_kinds=LIGHT_KINDS)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    # A second pipeline served beside it: its deployment gets its own name, not the first one's.
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**cfg, "name": "other", "lake": str(tmp_path / "lake2")}))
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    served = other = None
    try:
        _wait_healthy(api, server)
        other = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(tmp_path / "other.yaml"),
                                  "--cron", "0 3 * * *"], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        served = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(tmp_path / "p.yaml"),
                                   "--cron", "0 2 * * *"], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        result = asyncio.run(_check(env, served))
        assert result["cron"] == "0 2 * * *" and result["timezone"] == "UTC"
        assert result["scheduled"] and all(t.hour == 2 and t.minute == 0 for t in result["scheduled"])
        assert result["final_state"] == "Completed"
        assert list((tmp_path / "lake" / "releases" / "demo").glob("*/manifest.json"))
        assert result["other"] == (str((tmp_path / "other.yaml").resolve()), "0 3 * * *")
    finally:
        for p in (served, other, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


async def _deployment(client, name: str, served: subprocess.Popen):
    """The deployment called ``name``, once ``curate serve`` has registered it (up to 2 minutes)."""
    for _ in range(240):
        assert served.poll() is None, "curate serve exited early"
        dep = next((d for d in await client.read_deployments() if d.name == name), None)
        if dep is not None:
            return dep
        await asyncio.sleep(0.5)
    raise AssertionError(f"deployment {name!r} never appeared")


async def _check(env: dict[str, str], served: subprocess.Popen) -> dict:
    os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            async with get_client() as client:
                # Named after the pipeline by default, so two pipelines served side by side differ.
                dep = await _deployment(client, "demo", served)
                sched = dep.schedules[0].schedule
                runs = []
                for _ in range(60):
                    # This deployment's runs only: the other pipeline's deployment schedules its own.
                    runs = [r for r in await client.read_flow_runs()
                            if r.state_name == "Scheduled" and r.deployment_id == dep.id]
                    if runs:
                        break
                    await asyncio.sleep(0.5)
                run = await client.create_flow_run_from_deployment(dep.id)
                state = None
                for _ in range(600):
                    state = (await client.read_flow_run(run.id)).state
                    if state is not None and state.is_final():
                        break
                    await asyncio.sleep(0.5)
                other = await _deployment(client, "other", served)
                return {"cron": sched.cron, "timezone": sched.timezone,
                        "other": (other.parameters["config_path"], other.schedules[0].schedule.cron),
                        "scheduled": [r.expected_start_time for r in runs],
                        "final_state": state.name if state else None}
    finally:
        os.environ.pop("PREFECT_API_URL", None)
