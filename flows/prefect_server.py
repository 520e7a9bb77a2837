"""Prefect's temporary API server for one ``curate run``, started on the command's first line.

Without a Prefect API configured, Prefect 3.8 starts a temporary server itself, inside the first
flow call: the client first imports ``prefect.server.api.server`` (the whole server API, some
hundreds of pydantic models: 2-6 s of CPU) only to launch ``uvicorn
prefect.server.api.server:create_app`` in a subprocess, which imports the same modules again,
checks the database migrations and registers block types before it answers. All of it happens
after curate has imported its own modules, validated the pipeline and taken the lake lock, and
before the flow's first line: measured at 10-17 s of a `curate run` on a loaded 2-core machine.

:func:`early_server` launches the same server (the same command and settings Prefect uses for its
temporary server: UI off, the ephemeral set of services) as the first thing `curate run` does
(the ``curate`` entry point, flows/launch.py, calls it before the CLI's own imports) and points
``PREFECT_API_URL`` at it before Prefect is imported, so the server boots on another
core while curate imports and validates, and the client never imports the server's modules. The
flow is the same Prefect flow talking to a real Prefect server over HTTP; the server is stopped
when the command ends.

It is used only where Prefect would start a temporary server anyway; anything that could name an
API (``PREFECT_API_URL`` or ``PREFECT_API_KEY`` in the environment, a ``.env``, ``prefect.toml``
or ``pyproject.toml`` Prefect section in the working directory, the active profile) leaves the
choice to Prefect, as does ``CURATE_EARLY_PREFECT_SERVER=0``. With a real server
(``PREFECT_API_URL``, e.g. from ``prefect server start``) nothing is started: runs report to it.

The server's database is Prefect's usual one under ``PREFECT_HOME`` (``~/.prefect/prefect.db``),
kept between runs: its migrations run once, later starts only check that it is at the head
revision (~0.4 s). A fresh ``PREFECT_HOME`` pays the migrations and block registration (~10 s
under load) on its first start.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ENV_SWITCH = "CURATE_EARLY_PREFECT_SERVER"
# The settings Prefect's own temporary server is started with (prefect.server.api.server.SubprocessASGIServer).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
_FALSE = {"0", "false", "no", "off"}


def _active_profile(env: dict[str, str]) -> dict[str, object]:
    """The settings of Prefect's active profile (profiles.toml), or {} when there is none."""
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError):
        return {"unreadable": True}  # let Prefect read (and report) it
    name = env.get("PREFECT_PROFILE") or doc.get("active") or "ephemeral"
    profile = doc.get("profiles", {}).get(name, {})
    return profile if isinstance(profile, dict) else {"unreadable": True}


def prefect_would_start_one(env: dict[str, str] | None = None, cwd: Path | None = None) -> bool:
    """True when nothing could name a Prefect API, so that Prefect would start a temporary server.

    Conservative: any setting source that might name one (or switch the temporary server off)
    makes this False, and Prefect then decides as usual."""
    env = dict(os.environ if env is None else env)
    cwd = cwd or Path.cwd()
    if env.get(ENV_SWITCH, "1").lower() in _FALSE:
        return False
    if any(env.get(k) for k in ("PREFECT_API_URL", "PREFECT_API_KEY")):
        return False
    for key in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        if env.get(key, "true").lower() in _FALSE:
            return False
    if (cwd / "prefect.toml").exists():
        return False
    for name, marker in ((".env", "PREFECT_"), ("pyproject.toml", "tool.prefect")):
        try:
            if marker in (cwd / name).read_text(encoding="utf-8", errors="replace"):
                return False
        except OSError:
            pass
    profile = _active_profile(env)
    if "unreadable" in profile or any(k in profile for k in ("PREFECT_API_URL", "PREFECT_API_KEY")):
        return False
    return all(str(profile.get(k, "true")).lower() not in _FALSE
               for k in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"))


LOG_PREFIX = "curate-prefect-server-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_stale_logs(folder: str | Path | None = None) -> list[Path]:
    """Delete the empty server logs of curate processes that are gone; returns what it deleted.

    A run killed with SIGKILL never reaches :meth:`TemporaryServer.stop`, which deletes a log the
    server wrote nothing to, so each such run left an empty ``curate-prefect-server-<pid>-*.log``
    in the temporary folder. Logs with content are kept (they may explain a failure), as are those
    of live processes and names without a process id. Cost: one listing of the folder."""
    removed: list[Path] = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{LOG_PREFIX}*-*.log"):
        pid = path.name[len(LOG_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()
                removed.append(path)
    return removed


class PrefectServerError(RuntimeError):
    """The early server exited or did not answer in time; the message says what to do."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the server's process before exec (Linux): SIGTERM it when curate's process dies, so a
    killed run (SIGKILL: no atexit) leaves no server behind. Best effort."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


class TemporaryServer:
    """A Prefect API server in a subprocess on a free local port; :meth:`wait_ready` before the
    first flow call; :meth:`stop` runs at exit (registered with atexit when it starts).

    The server's own output goes to a log file in the temporary folder, not to curate's terminal:
    a server that fails prints Prefect's traceback there, and the error curate raises quotes its
    end and names the file (kept when the server wrote anything, deleted otherwise; the empty log
    of a run killed with SIGKILL is deleted by the next run, :func:`sweep_stale_logs`). A server that
    exits before it answers is started once more on the same port: two runs starting at once on a
    fresh ``PREFECT_HOME`` race to create its database, and the one that loses finds it made."""

    RESTARTS = 1

    def __init__(self) -> None:
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.started = time.perf_counter()
        self.ready_after: float | None = None
        # The log's name carries this process's id, so that a later run can tell the log of a
        # run killed with SIGKILL (no atexit, no stop) from that of a run still going.
        fd, self.log_path = tempfile.mkstemp(prefix=f"{LOG_PREFIX}{os.getpid()}-", suffix=".log")
        os.close(fd)
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = self._launch()
        atexit.register(self.stop)
        sweep_stale_logs()  # after the launch: the server boots meanwhile

    def _launch(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | SERVER_ENV
        # --app-dir as Prefect passes it: prefect's own install first on the path, whatever the cwd holds
        # (find_spec locates the package without importing it).
        spec = importlib.util.find_spec("prefect")
        app_dir = ["--app-dir", str(Path(spec.origin).parent.parent)] if spec and spec.origin else []
        cmd = [sys.executable, "-m", "uvicorn", *app_dir, "--factory", "prefect.server.api.server:create_app",
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Block until the server answers its health check; returns the seconds since it was
        launched. Raises PrefectServerError (saying what to do) if it exits or times out."""
        import httpx

        if self.ready_after is not None:
            return self.ready_after
        from flows.prefect_env import EPHEMERAL_STARTUP_TIMEOUT_S
        limit = timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
                                   or EPHEMERAL_STARTUP_TIMEOUT_S)
        deadline = self.started + limit
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    if self.process is not None and self.restarts < self.RESTARTS:
                        self.restarts += 1
                        self.process = self._launch()
                        continue
                    raise PrefectServerError(self._hint(f"Prefect's temporary server exited (code {code}) before it "
                                                        "was ready") + self._log_tail())
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() > deadline:
                    self.stop()
                    raise PrefectServerError(self._hint(f"Prefect's temporary server was not ready after {limit:.0f} s "
                                                  "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)") + self._log_tail())
                time.sleep(0.05)
        self.ready_after = time.perf_counter() - self.started
        return self.ready_after

    def _log_tail(self, lines: int = 8) -> str:
        """The end of the server's log, quoted for an error message ('' when it wrote nothing)."""
        try:
            text = Path(self.log_path).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        if not text:
            return ""
        tail = "\n    ".join(text.splitlines()[-lines:])
        return f"\nIts log ({self.log_path}) ends:\n    {tail}"

    @staticmethod
    def _hint(what: str) -> str:
        return (f"{what}. Start a Prefect server (`prefect server start`) and set PREFECT_API_URL to it, "
                f"or set {ENV_SWITCH}=0 to let Prefect start its own.")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            if not os.path.getsize(self.log_path):
                os.unlink(self.log_path)


# The server this process started (one per process: a second call returns it).
_STARTED: TemporaryServer | None = None


def early_server() -> TemporaryServer | None:
    """Start Prefect's temporary server now and point ``PREFECT_API_URL`` at it, when Prefect
    would start one for the run anyway and is not imported yet; else None (Prefect decides).
    Called again (the ``curate`` entry point starts it before the CLI's imports, `curate run`
    asks for it later), it returns the server already started."""
    global _STARTED
    if _STARTED is not None:
        return _STARTED
    if "prefect" in sys.modules or not prefect_would_start_one():
        return None
    _STARTED = TemporaryServer()
    os.environ["PREFECT_API_URL"] = _STARTED.api_url
    return _STARTED
