#!/usr/bin/env bash
# The GPU check (issue 20): run it first thing whenever a GPU machine is lent, in one call, e.g.
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=560)
# It runs mft from the working tree under the machine's own python3 (torch + CUDA, transformers, peft,
# accelerate, triton; no datasets, trl, deepspeed). One table on stdout, gpu_check.json under $OUT.
# Dry run on CPU with tiny shapes (CI does this in tests/test_flex_attention.py): bash benchmarks/gpu_check.sh --cpu
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ "${1:-}" = "--cpu" ]; then PYTHON=.venv/bin/python; fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch, transformers; print('gpu_check: torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
