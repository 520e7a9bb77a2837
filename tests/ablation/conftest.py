"""Fixtures for the ablation tests: small lakes of real-text releases (shared corpora)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.export.release_builder import build_release

REPO = Path(__file__).resolve().parents[2]
HELDOUT = REPO / "demo" / "ablation" / "heldout_wiki_en.jsonl"


def make_release(lake: Path, corpora: Path, name: str, version: str = "v1", **kw) -> Path:
    """A release folder at ``lake/releases/NAME/VERSION`` (release_builder's planned release),
    with its manifest renamed so that releases of one lake have distinct names."""
    d = build_release(lake / "releases" / name / version, corpora, **kw)
    m = json.loads((d / "manifest.json").read_text())
    m.update(name=name, version=version, content_hash=f"{name}-{version}-{m['content_hash']}")
    (d / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    (lake / "releases" / name / "LATEST").write_text(version)
    return d


@pytest.fixture(scope="session")
def two_release_lake(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Path:
    """A lake with release ``en/v1`` (English Wikipedia + Python docs) and ``fr/v1`` (French and
    Spanish Wikipedia): different row counts and document lengths."""
    lake = tmp_path_factory.mktemp("ablation-lake")
    make_release(lake, corpora, "en", sources={"wiki_en": 120, "python_docs": 10})
    make_release(lake, corpora, "fr", sources={"wiki_en": 10, "wiki_fr": 150, "wiki_es": 80})
    return lake


def tiny_config(**over):
    """The ``test`` preset: 4 steps of 4 x 64 tokens, evaluated twice (plus step 0)."""
    from ablations.config import AblationConfig

    base = dict(model={"preset": "test"}, budget_tokens=4 * 4 * 64, seq_len=64, batch_size=4, seeds=[0, 1],
                eval={"points": 2, "heldout": [{"name": "wiki", "path": str(HELDOUT), "max_docs": 12}]},
                decontamination="warn", base_dir=str(REPO))
    base.update(over)
    if "budget_tokens" not in over:
        base["budget_tokens"] = 4 * base["batch_size"] * base["seq_len"]
    return AblationConfig.model_validate(base)
