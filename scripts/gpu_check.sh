#!/usr/bin/env bash
# Every GPU path on a machine with one CUDA GPU, in at most ~8 minutes (GPU_CHECK_BUDGET_S),
# results as JSON under benchmarks/results/gpu/; exits non-zero if any part fails.
#
#   1. pytest -m gpu           CUDA-only code paths (trie masking on CUDA == CPU, HF beam search
#                              on CUDA, QLoRA through bitsandbytes)
#   2. constrained decoding    scripts/bench/constrained_decoding.py --quick (adds its CUDA rows
#                              when a GPU is visible)
#   3. SFT LoRA + QLoRA        scripts/bench/sft_gpu.py: a Qwen2.5-0.5B-shaped model built from a
#                              config (no downloads), a few steps of each
#   4. vLLM serving            scripts/bench/serving.py --device cuda: vLLM vs HF over HTTP (goal:
#                              vLLM >= 5x HF's throughput)
#   5. vLLM beam search        scripts/bench/vllm_beam.py: constrained top-K vs vLLM's own beam
#                              search (synthetic 100k catalog; the quickstart's too with RUN=DIR)
#
# On a machine without a CUDA GPU it runs its CPU-side checks (the GPU tests collect, the
# scripts parse) and skips the GPU parts with a message; exit 0.
#
#   bash scripts/gpu_check.sh
#   PYTHON=.venv/bin/python VLLM_PYTHON=.venv-vllm/bin/python RUN=runs/qs bash scripts/gpu_check.sh
#
# PYTHON: torch (CUDA), transformers, trl, peft, bitsandbytes (the llmrec[quant] extra).
# VLLM_PYTHON: the CUDA build of vLLM with llmrec[serve] (scripts/vllm_tests.sh with
# LLMREC_VLLM_SPEC=vllm makes one); defaults to PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
VPY="${VLLM_PYTHON:-$PY}"
OUT="${GPU_CHECK_OUT:-benchmarks/results/gpu}"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
start=$SECONDS
failures=()

# step NAME LIMIT_S CMD...: run CMD with at most LIMIT_S seconds (less if the budget is short).
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - (SECONDS - start)))
  if ((left < 10)); then
    echo "== $name: not run (the ${BUDGET} s budget is spent)"
    failures+=("$name: not run, budget spent")
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (at most ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  if ((rc == 124 || rc == 137)); then
    failures+=("$name: timed out after ${limit} s")
  elif ((rc != 0)); then
    failures+=("$name: exit $rc")
  fi
}

finish() {
  echo
  echo "== gpu_check: $((SECONDS - start)) s"
  if ((${#failures[@]})); then
    printf '== FAILED: %s\n' "${failures[@]}"
    exit 1
  fi
  echo "== $1"
  exit 0
}

# ---- CPU-side checks (every machine) -----------------------------------------------------------
step "scripts parse" 60 "$PY" -m py_compile scripts/bench/sft_gpu.py scripts/bench/vllm_beam.py \
  scripts/bench/serving.py scripts/bench/constrained_decoding.py
step "gpu tests collect" 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests

has_gpu="$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [[ "$has_gpu" != 1 ]]; then
  echo
  echo "== no CUDA GPU visible to $PY (torch.cuda.is_available() is False): skipping the GPU"
  echo "   parts: pytest -m gpu, constrained decoding CUDA rows, SFT LoRA/QLoRA, vLLM serving,"
  echo "   vLLM beam search. Run this script on a machine with one CUDA GPU for them."
  finish "CPU-side checks passed; GPU parts skipped (no GPU)"
fi

# ---- GPU parts -----------------------------------------------------------------------------------
mkdir -p "$OUT"
"$PY" -c 'import torch; print("== GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
if ! "$VPY" -c 'import vllm, torch; assert torch.cuda.is_available()' 2>/dev/null; then
  echo "== $VPY cannot import a CUDA build of vLLM: the vLLM parts will fail"
  echo "   (LLMREC_VLLM_SPEC=vllm bash scripts/vllm_tests.sh makes such an environment)"
fi
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"  # unused on GPU; harmless

step "pytest -m gpu" 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
step "constrained decoding (CUDA rows)" 75 "$PY" scripts/bench/constrained_decoding.py --quick \
  --out "$OUT/constrained_decoding.json"
step "SFT LoRA + QLoRA" 100 "$PY" scripts/bench/sft_gpu.py --out "$OUT/sft.json"
step "vLLM serving (vLLM vs HF)" 120 "$VPY" scripts/bench/serving.py --device cuda \
  --hidden 1024 --layers 16 --heads 16 --concurrency 64 --requests 600 --warmup 32 \
  --max-seconds 15 --out "$OUT/serving.json"
beam_args=(--catalogs synthetic --widths 10,50 --users 64 --reps 3 --latency-users 16
  --so-users 2 --gpu-memory-utilization 0.3 --out "$OUT/vllm_beam.json")
if [[ -n "${RUN:-}" ]]; then
  beam_args+=(--run "$RUN" --catalogs quickstart,synthetic)
fi
step "vLLM beam search" 110 "$VPY" scripts/bench/vllm_beam.py "${beam_args[@]}"
if [[ -f "$OUT/serving.json" ]]; then
  "$PY" - "$OUT/serving.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
ratio = s.get("throughput_ratio_vllm_vs_hf")
print(f"== serving: vLLM / HF throughput {ratio} (goal >= 5)")
EOF
fi
finish "all parts passed"
