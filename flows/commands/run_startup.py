"""The start of ``curate run``: Prefect's server launched first (flows/prefect_server.py), then
timestamps of each start-up step.

``CURATE_STARTUP_TIMES=1`` prints them as one JSON line on stderr at the end of the command
(seconds since the process started: ``prefect_launched`` (the ``curate`` entry point launched
the server, before the CLI's imports: flows/launch.py), ``cli`` when the run command began,
``validated``, ``imported`` (the pipeline modules and Prefect), ``warmed`` (the modules the flow
imports on first use, imported while the server boots), ``prefect_ready`` (the server answered;
the seconds spent waiting for it are ``prefect_wait_s``), ``flow_start``, ``end``).
benchmarks/dedup/user_path.py reads them.
"""
from __future__ import annotations

import json
import os
import sys
import time
from types import TracebackType

from flows.prefect_server import PrefectServerError, TemporaryServer, early_server


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0.0 where unknown)."""
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class RunStartup:
    """Context manager around `curate run`: starts the early Prefect server when ``early_server``
    and Prefect would start one (it stops at exit), and turns its failure into one line."""

    def __init__(self, early_server: bool) -> None:
        self._t0 = time.perf_counter() - _process_age()
        self.marks: dict[str, float] = {}
        self.mark("cli")
        self.server: TemporaryServer | None = start_server() if early_server else None
        self.marks["prefect_server"] = 1.0 if self.server else 0.0  # 1: curate started it early
        if self.server is not None:
            self.marks["prefect_port"] = float(self.server.port)
            self.marks["prefect_launched"] = round(self.server.started - self._t0, 3)

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.perf_counter() - self._t0, 3)

    def ready(self) -> None:
        """Right before the flow: wait for the early server (if any). While it boots (its own
        process, ~5-7 CPU s of imports), this process imports what the flow would import on first
        use (``flows.pipeline.warm_imports``): the same CPU, off the run's critical path."""
        if self.server is not None:
            from flows.pipeline import warm_imports
            warm_imports()
            self.mark("warmed")
            t = time.perf_counter()
            self.server.wait_ready()
            self.marks["prefect_wait_s"] = round(time.perf_counter() - t, 3)
            self.mark("prefect_ready")
        self.mark("flow_start")

    def __enter__(self) -> RunStartup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # The server is stopped at exit (TemporaryServer registers that with atexit before Prefect is
        # imported, so it runs after Prefect's own exit handlers, which still send the run's last
        # events and logs to it: stopped here, they would retry against a closed port for a minute).
        self.mark("end")
        if os.environ.get("CURATE_STARTUP_TIMES", "0") not in ("", "0"):
            print("startup-times " + json.dumps(self.marks), file=sys.stderr, flush=True)
        if isinstance(exc, PrefectServerError):
            import typer
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None


def start_server() -> TemporaryServer | None:
    """The early server (flows/prefect_server.early_server), or None where Prefect decides or it
    could not be launched (then Prefect starts its own, as without curate's early start)."""
    try:
        return early_server()
    except OSError as e:  # no free port, cannot spawn: Prefect's own path still works
        print(f"warning: could not start Prefect's server early ({e}); Prefect starts its own", file=sys.stderr)
        return None
