#!/usr/bin/env bash
# The GPU path's CPU checks under the GPU machine's torch release, before a GPU session.
#
# Why: CI and .venv run torch 2.13.0 (the CPU wheel on these machines); the lent GPU machine has
# torch 2.11.0 (docs/benchmarks.md, "GPU"). Code the GPU path runs (custom operators, inductor,
# megatron's autograd functions) can pass CI and still fail there, where a session has a few
# minutes of device time. This builds a second venv with torch==$TORCH_VERSION (a CUDA build,
# about 4.6 GB, which runs on the CPU) and the rest of requirements.lock, then runs the tests of
# the modules the GPU path uses and gpu_check.sh's CPU mode with it. Python stays 3.11 (the GPU
# machine's is 3.12; 3.12 is not on these machines), so this checks torch, not Python.
#
# Environment: TORCH_VERSION (2.11.0), COMPAT_VENV (/tmp/arcforge-torch-$TORCH_VERSION; kept and
# reused), GPU_CHECK_OUT (where gpu_check.sh's summary goes: $COMPAT_VENV/gpu-check).
set -euo pipefail
TORCH=${TORCH_VERSION:-2.11.0}
VENV=${COMPAT_VENV:-/tmp/arcforge-torch-$TORCH}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$VENV/bin/python"

if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  echo "== venv $VENV with torch==$TORCH and requirements.lock (minus torch)"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH"
  grep -v -E '^torch==' "$REPO/requirements.lock" > "$VENV/requirements.txt"
  "$VENV/bin/pip" install -q -r "$VENV/requirements.txt"
fi
"$PY" -c "import torch, megatron.core as m; print('torch', torch.__version__, 'megatron-core', m.__version__)"

cd "$REPO"
echo "== the GPU path's tests (dispatcher, compiled layers, kernels, losses, recompute, backends)"
PYTHONPATH="$REPO" "$PY" -m pytest -p no:cacheprovider -q \
  tests/test_dispatch.py tests/test_compile.py tests/test_kernels.py tests/test_loss_reporting.py \
  tests/test_recompute.py tests/test_host_reads.py tests/test_routing_init.py \
  tests/test_train_backends.py tests/test_optim.py tests/test_gpu_check_plan.py

echo "== gpu_check.sh, CPU mode"
GPU_CHECK_CPU=1 GPU_CHECK_OUT="${GPU_CHECK_OUT:-$VENV/gpu-check}" PYTHON="$PY" bash benchmarks/gpu_check.sh
