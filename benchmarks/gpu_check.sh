#!/usr/bin/env bash
# One prepared check of the vLLM paths on a GPU machine (about 8 minutes at most), for a session
# that is lent one (the device tool's `run`). Results go under $OUT (default /tmp/gpu_check):
#   summary.txt          what ran, the figures, the verdicts
#   env.txt              nvidia-smi, Python, vllm/ray/torch versions, CPU
#   rewriting_pc_on.txt  benchmarks/rewriting.py, prefix caching on  (the rewrite stage vs raw vllm.LLM.chat)
#   rewriting_pc_off.txt benchmarks/rewriting.py, prefix caching off
#   ray_vllm.txt         benchmarks/ray_vllm.py: `curate run` on the local executor and on a Ray node with the
#                        real GPU (ray start --num-gpus 1): one actor, one engine, same documents, prompts/s
#
# What the GPU machine must have (its image holds torch and transformers, not vllm, ray, polars,
# duckdb or prefect, and reaches no registry): the missing packages as wheels in .whl/ (the device
# README's recipe; vllm's CUDA wheel is far above the 64 MiB a call carries, so the vllm check only
# runs on an image that has vllm) and the model. The model: SmolLM2-135M-Instruct from
# $CURATE_CACHE/models/smollm2-135m-instruct when present; else this script builds a model of the
# same architecture with random weights from the carried config and tokenizer in .gpu_assets/
# (config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja: ~4 MB; copy them from
# ~/.cache/curate/models/smollm2-135m-instruct and add /.gpu_assets/ to .git/info/exclude). Random
# weights generate nonsense, but every prompt costs what it costs with the real weights (same
# shapes, replies run to max_tokens), so prompts/s, tokens/s and the overhead ratios hold; the
# document comparison between executors holds too (greedy on both sides).
#
# Call (device tool): run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_assets"], timeout_s=540)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
# ../shared/corpora does not travel to the device: the bundled sample of the same files does.
[ -f ../shared/corpora/wiki_en.parquet ] || export CURATE_CORPORA=${CURATE_CORPORA:-$PWD/tests/data/corpora}
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" PATH="/tmp/site/bin:$PATH" || log "wheel install failed"
fi

{ nvidia-smi; $PY -V; grep -m1 'model name' /proc/cpuinfo; nproc; uptime; } > "$OUT/env.txt" 2>&1
$PY - > "$OUT/imports.txt" 2>&1 <<'EOF'
import importlib
for m in ("torch", "vllm", "ray", "polars", "duckdb", "prefect", "pyarrow", "transformers"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", type(e).__name__, str(e)[:200])
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
cat "$OUT/imports.txt" >> "$OUT/env.txt"
if grep -q "^vllm MISSING" "$OUT/imports.txt"; then
  log "vllm is not importable here: nothing of the vLLM path can run (see env.txt). Carry its wheels or use an image with vllm."
  exit 3
fi

# The model: the real one if cached, else SmolLM2-shaped random weights from .gpu_assets.
export CURATE_CACHE=${CURATE_CACHE:-$HOME/.cache/curate}
M="$CURATE_CACHE/models/smollm2-135m-instruct"
if [ ! -f "$M/model.safetensors" ]; then
  if [ ! -f .gpu_assets/config.json ]; then log "no model: neither $M nor .gpu_assets/config.json"; exit 4; fi
  mkdir -p "$M" && cp .gpu_assets/* "$M/"
  $PY - "$M" <<'EOF' && log "built random-weight SmolLM2-135M-shaped model in $M (speed figures only)"
import sys, torch, transformers
cfg = transformers.AutoConfig.from_pretrained(sys.argv[1])
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
model.save_pretrained(sys.argv[1], safe_serialization=True)
EOF
fi

GPU_UTIL=${GPU_UTIL:-0.3}
for pc in on off; do
  log "rewriting benchmark, prefix caching $pc"
  timeout 110 $PY benchmarks/rewriting.py --docs 64 --max-tokens 128 --segment-tokens 256 --method wrap \
    --gpu-memory-utilization "$GPU_UTIL" --prefix-caching $pc --cold > "$OUT/rewriting_pc_$pc.txt" 2>&1
  log "  exit $?: $(grep -iE 'prompts/s|overhead|ratio' "$OUT/rewriting_pc_$pc.txt" | tr '\n' ' ' | cut -c1-400)"
done

log "Ray actor on the real GPU vs local executor (curate run twice)"
timeout 270 $PY benchmarks/ray_vllm.py --docs 6 --cpus 8 --gpu-memory-utilization "$GPU_UTIL" \
  > "$OUT/ray_vllm.txt" 2>&1
log "  exit $?: $(grep -E 'identical|engines|prompts/s|ratio' "$OUT/ray_vllm.txt" | tr '\n' ' ' | cut -c1-600)"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> "$OUT/summary.txt" 2>&1
log "done"
