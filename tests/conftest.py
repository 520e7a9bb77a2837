"""Shared fixtures. Real text comes from ../shared/corpora (beside the checkout) or demo/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
