"""A real, long-running Prefect server for the user-path benchmark (``--prefect-server running``).

The setup of a user who schedules nightly flows: ``prefect server start`` once, and
``PREFECT_API_URL=http://127.0.0.1:PORT/api`` in the environment of every ``curate run``. The
server starts here before the timed runs (its boot is not counted: it outlives them), with its
own ``PREFECT_HOME`` under the work folder, and stops when the benchmark ends. Its CPU seconds
while a run talks to it are measured (``cpu_s``: every process of the server's session, from
/proc; Linux) so the figure can count them: the run's own CPU seconds no longer include a server.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from flows.prefect_server import _free_port


class RunningServer:
    """``prefect server start`` in its own session; ``url`` is its API address."""

    def __init__(self, work: Path, env: dict[str, str], timeout_s: float = 180.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        home = work / "prefect-home-server"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.env.pop("PREFECT_API_URL", None)
        prefect = str(Path(sys.executable).parent / "prefect")
        self.log = open(work / "prefect-server.log", "w")
        self.proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server start exited ({self.proc.returncode}); see {self.log.name}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {timeout_s:.0f} s; see {self.log.name}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the processes in the server's session so far."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.proc.pid:  # session id (field 6 of stat; 4th after the name)
                    total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def running_server(work: Path, env: dict[str, str]) -> Iterator[RunningServer]:
    server = RunningServer(work, env)
    try:
        yield server
    finally:
        server.stop()
