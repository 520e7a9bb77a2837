"""The proxy model: a small Llama-architecture decoder from ``transformers``, built the same way
for every release, and the torch settings that make a CPU run reproducible bit for bit.

Why ``transformers`` model classes with a plain PyTorch loop (and not litgpt or torchtitan):
``transformers`` is already a dependency of curate (the inference layer uses it), its Llama
class is maintained and loads anywhere (``from_pretrained`` on the saved checkpoint, vLLM,
lm-evaluation-harness), and a 60-line loop keeps every source of non-determinism in view (init
RNG, data order, thread count). litgpt and torchtitan are built around their own data loaders,
config systems and distributed launchers, and pin torch versions of their own; curate must stay
on torch 2.13.0 (see docs/ablation.md for what was checked).

Presets (``hidden/intermediate/layers/heads/kv-heads``; tied embeddings; SwiGLU; RoPE). Parameter
counts are with the built-in 4,096-id tokenizer unless noted; the larger shapes are the
published SmolLM2 / Llama-3.2 shapes and are meant for ``tokenizer: smollm2`` on a GPU:

| preset | shape | parameters | where |
|---|---|---|---|
| ``test`` | 32/64/2/2/2 | 0.14M | unit tests (seconds) |
| ``1m`` | 128/256/4/4/4 | 1.18M (0.66M without embeddings) | CPU, minutes: demo and docs/ablation.md |
| ``10m`` | 256/768/8/8/8 | 7.8M | CPU (an hour) or any GPU |
| ``125m`` | 576/1536/30/9/3 | 135M with SmolLM2's 49,152 ids | GPU |
| ``360m`` | 960/2560/32/15/5 | 362M with SmolLM2's ids | GPU |
| ``1b`` | 2048/8192/16/32/8 | 1.07B with SmolLM2's ids | GPU |
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ablations.config import AblationConfig

PRESETS: dict[str, dict[str, int]] = {
    "test": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
    "1m": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "10m": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=8),
    "125m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
}


def model_shape(cfg: AblationConfig) -> dict[str, Any]:
    """The preset's shape with the config's overrides applied."""
    if cfg.model.preset not in PRESETS:
        raise ValueError(f"unknown model preset {cfg.model.preset!r}; choose one of {', '.join(PRESETS)}")
    shape: dict[str, Any] = dict(PRESETS[cfg.model.preset])
    shape.update({"tie_word_embeddings": True, "rope_theta": 10000.0})
    shape.update(cfg.model.model_dump(exclude={"preset"}, exclude_none=True))
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise ValueError(f"hidden_size {shape['hidden_size']} is not a multiple of num_attention_heads "
                         f"{shape['num_attention_heads']}")
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return shape


def build_model(cfg: AblationConfig, vocab_size: int, eos_id: int, seed: int) -> Any:
    """A freshly initialised ``LlamaForCausalLM``; the same (config, seed) give the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = model_shape(cfg)
    rope_theta = shape.pop("rope_theta")
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=cfg.seq_len, rms_norm_eps=1e-5,
                         initializer_range=0.02, attention_dropout=0.0, bos_token_id=eos_id, eos_token_id=eos_id,
                         pad_token_id=eos_id, use_cache=False, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def count_parameters(model: Any) -> dict[str, int]:
    """Distinct parameters (tied weights once), and those outside the embedding table."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    total = sum(seen.values())
    emb = model.get_input_embeddings().weight.numel()
    return {"params": total, "params_non_embedding": total - emb}


def resolve_device(cfg: AblationConfig) -> str:
    import torch
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no GPU; use device: cpu or auto")
    return cfg.device


@contextmanager
def reproducible_torch(threads: int, device: str) -> Iterator[None]:
    """Deterministic algorithms and a fixed intra-op thread count for the duration of a run.

    On CPU this makes a run repeat bit for bit (given the same thread count). On CUDA the
    deterministic flag is set with ``warn_only`` (some kernels have no deterministic version)
    and cuBLAS gets the fixed workspace it needs. The previous settings are restored after."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if device != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)
