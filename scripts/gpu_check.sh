#!/usr/bin/env bash
# The GPU check: one short script for whichever session is lent a GPU machine (see BENCHMARKS.md).
#
#   bash scripts/gpu_check.sh            # on the GPU machine: --device cuda, results in $OUT (or runs/gpu-check)
#   bash scripts/gpu_check.sh cpu        # the same steps on this CPU (tests/test_gpu_check.py runs it)
#
# The GPU machine has PyTorch, transformers, peft, numba and tensorboard but nothing can be fetched there:
# the pure-Python wheels it lacks travel with the working tree. Make them here once, then carry the folder:
#   pip download --no-deps -d runs/gpu-wheels gymnasium farama-notifications cloudpickle
#   (device tool) run command="bash scripts/gpu_check.sh" carry=["runs/gpu-wheels"] timeout_s=480
# Steps (scripts/gpu_check.py): generation and scoring with the prefix cache, learner steps in float32 and
# bfloat16, a one-iteration self-play run with --device, the search kernels; then the tests a GPU un-skips
# (tests/test_lm_vllm.py: they still skip where vllm is not installed). About 2 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${1:-cuda}"
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import gymnasium" 2>/dev/null; then
    python -m pip install -q --no-deps --no-index runs/gpu-wheels/*.whl
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
status=0
python scripts/gpu_check.py --device "$DEVICE" --out "$OUT" || status=$?
python -m pytest -q -rs -p no:cacheprovider tests/test_lm_vllm.py > "$OUT/pytest_gpu.txt" 2>&1 || true
tail -n 3 "$OUT/pytest_gpu.txt"
exit "$status"
