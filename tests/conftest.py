"""Shared fixtures. Real text comes from ../shared/corpora (beside the checkout) or demo/data."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings at import: give the whole test session a private, quiet home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="curate-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("CURATE_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("CURATE_CORPORA", REPO.parent / "shared" / "corpora"))
DEMO = REPO / "demo"


@pytest.fixture(scope="session")
def corpora() -> Path:
    """The shared real-text corpora; CI always has them beside the checkout."""
    if not (CORPORA / "wiki_en.parquet").exists():
        pytest.fail(f"real-text corpora not found at {CORPORA}; set CURATE_CORPORA to the shared/corpora folder")
    return CORPORA


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def s3_server():
    """A live S3-protocol server (moto's standalone server) for the whole session; its client
    variables (AWS_ENDPOINT_URL, credentials) are set in this process and inherited by children.
    Make a fresh bucket per test with ``s3_server.bucket()``."""
    from tests.s3server import S3Server
    server = S3Server().start()
    old = server.apply_env()
    try:
        yield server
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
