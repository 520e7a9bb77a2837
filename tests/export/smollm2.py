"""The SmolLM2 tokenizer for tests and benchmarks (see engines.inference.models.smollm2_tokenizer)."""
from __future__ import annotations

from pathlib import Path

from engines.inference.models import smollm2_tokenizer


def build_tokenizer() -> Path:
    return smollm2_tokenizer()
