#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU, in about five minutes: the CUDA tests (tests/test_cuda.py:
# bf16 and fp16 training, kill-and-resume under trainer.deterministic=true, decoder=upsample refused under it,
# torchrun with NCCL on every GPU, predict and generate on CUDA), then `scripts/bench.py --quick` on the GPU (the measured bf16 matmul peak and
# the UNet step's share of it at width 32 and 64, batch 64, eager and compiled).
#
#   scripts/gpu_check.sh [OUT_DIR]     # default: gpu_check/ ; writes tests.log, bench.json, bench.log there
#
# Exit status: that of the tests, else that of the benchmark. Run it from the repository root, in the
# environment that the README sets up.
set -uo pipefail

cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA GPU visible to torch (torch.cuda.is_available() is false); run this on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"

python -m pytest tests/test_cuda.py -m cuda -v -rs 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}

python scripts/bench.py --quick --device cuda --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}

echo "GPU check: tests exit $tests, benchmark exit $bench; logs and bench.json in $out/"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
