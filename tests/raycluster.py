"""A real local Ray cluster of two nodes on this machine, for tests.

``ray start --head --block`` and ``ray start --address=... --block`` each run in a process group of
their own; stopping kills exactly those groups (never ``ray stop``, which would end every Ray on the
machine), then any process still running under this cluster's temporary folder.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoNodeRay:
    """Head with 1 CPU plus a second node with 1 CPU and the custom resource ``node2``. The head
    serves Ray clients on a port of its own (``client_address``: ``ray://...``; Ray's default
    port, 10001, may be another cluster's on a shared machine)."""

    def __init__(self, env: dict[str, str]):
        # Ray 2.59+ authenticates local clusters by token: one token for the cluster and its drivers.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on SIGTERM, `ray start --block` (Ray 2.60) first marks
        # its node draining and waits up to 30 s (the default) for the raylet to go idle; these nodes
        # serve nothing that drains (no Serve), so stop() waited the full 30 s. 0 skips the drain and
        # stops the node's processes at once, as before that setting existed (Ray's ray_constants).
        self.env = {**env, **self.auth, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.port = free_port()
        # Short: Ray's Unix sockets live under it and socket paths are limited to ~107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="cr", dir="/tmp")
        self.procs: list[subprocess.Popen] = []
        self.address = f"127.0.0.1:{self.port}"
        self.client_address = f"ray://127.0.0.1:{free_port()}"

    def _ray(self, *args: str) -> subprocess.Popen:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        log = open(Path(self.tmp) / f"start-{len(self.procs)}.log", "wb")
        p = subprocess.Popen([ray_bin, "start", "--block", "--disable-usage-stats", *args], env=self.env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def start(self, timeout: float = 240) -> TwoNodeRay:
        common = ("--num-cpus=1", "--num-gpus=0", "--object-store-memory=150000000")
        self._ray("--head", f"--port={self.port}", f"--temp-dir={self.tmp}", "--include-dashboard=false",
                  f"--ray-client-server-port={self.client_address.rsplit(':', 1)[1]}", *common)
        self._wait_nodes(1, timeout)
        self._ray(f"--address={self.address}", "--resources={\"node2\": 1}", *common)
        self._wait_nodes(2, timeout)
        return self

    def _wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}: {self.logs()}")
            out = subprocess.run([sys.executable, "-c", _COUNT_NODES, self.address], env=self.env,
                                 capture_output=True, text=True, timeout=120)
            if out.returncode == 0 and out.stdout.strip() == str(n):
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {n} nodes in {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in Path(self.tmp).glob("start-*.log"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(Exception):
                    os.killpg(p.pid, signal.SIGKILL)
        # Processes the raylets started in sessions of their own (workers, agents): found by our folder.
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(self.tmp in part for part in proc.info["cmdline"] or []):
                with contextlib.suppress(Exception):
                    proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


_COUNT_NODES = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(len([n for n in ray.nodes() if n["Alive"]]))
"""
