"""A real S3-protocol server for tests: moto's standalone server in a subprocess on a free port.

s3fs's own test-suite uses the same server. Clients reach it through the standard AWS variables
(``AWS_ENDPOINT_URL``, credentials, region), which botocore, aiobotocore (s3fs), DuckDB's
configuration in curate and subprocesses such as ``curate run`` all read, so a pipeline file can
say ``lake: s3://bucket/lake`` and nothing else changes.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """``with S3Server() as s3: s3.bucket()`` gives ``s3://<fresh bucket>`` on a live server."""

    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables that point boto-based clients (and child processes) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1"}

    def start(self, timeout_s: float = 30.0) -> S3Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode} (is `moto[server]` installed?)")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not listen on port {self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket and return its ``s3://`` URL."""
        import boto3
        name = name or f"curate-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}"

    def apply_env(self) -> dict[str, str | None]:
        """Set the client variables in this process (and so in its children); returns the old values."""
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        import fsspec
        fsspec.config.conf.setdefault("s3", {})  # nothing cached by fsspec's own config
        return old

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
