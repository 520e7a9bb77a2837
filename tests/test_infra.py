"""Test infrastructure: the S3 test server speaks what curate relies on; fault points kill only when named."""
from __future__ import annotations

import fsspec
import pytest

from engines import faults


def test_s3_server_round_trip_and_conditional_create(s3_server):
    base = s3_server.bucket()
    fs, path = fsspec.core.url_to_fs(f"{base}/lake/lock.json")
    with fs.open(path, "xb") as f:
        f.write(b"owner-1")
    with pytest.raises(FileExistsError):
        with fs.open(path, "xb") as f:
            f.write(b"owner-2")
    assert fs.cat(path) == b"owner-1"
    assert fs.ls(f"{base}/lake".split("://", 1)[1]) == [path]


def test_fault_point_is_inert_unless_named(monkeypatch):
    monkeypatch.setenv("CURATE_FAULT", "some:other:point")
    faults.fault_point("release:after_shards")  # returns: not the named point
    monkeypatch.delenv("CURATE_FAULT")
    faults.fault_point("release:after_shards")


def test_fault_point_kills_with_sigkill_when_named(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    env = {**os.environ, "CURATE_FAULT": "a:b, release:after_shards"}
    code = "from engines.faults import fault_point; fault_point('release:after_shards'); print('survived')"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(tmp_path),
                       check=False)
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout
