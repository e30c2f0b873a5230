#!/usr/bin/env bash
# Download, here (with network), the wheels that benchmarks/gpu_check.sh installs on a bare GPU
# machine (Python 3.12, torch 2.11 + CUDA, no network, no megatron-core, no pydantic):
#   bash benchmarks/gpu_wheels.sh            # -> benchmarks/gpu_wheels/*.whl (git-ignored)
# Pinned to the versions this repo's venv runs; --no-deps, so every needed distribution is named.
# The GPU machine already has numpy, packaging, pyyaml, rich, sentencepiece, pyarrow, torch
# (see /work/shared/reference/gpu.md); boto3 (megatron's optional S3 reader) and dill (torch's
# optional datapipes) are imported inside try/except and are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=benchmarks/gpu_wheels
PY=${PYTHON:-.venv/bin/python}
WHEELS=(
  megatron-core==0.16.1     # cp312 manylinux wheel; needs numpy, packaging, torch (there)
  pydantic==2.14.3          # arcforge's configs and ArchConfig
  pydantic-core==2.50.4     # pydantic 2.14's compiled core (cp312)
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0 # pydantic 2.14 needs >= 4.16; the machine's may be older
  platformdirs==4.14.7      # arcforge.tokenize.spm / demo corpus cache dirs (imported lazily)
)
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -ch "$DEST"/*.whl | tail -1
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu_wheels: $total bytes is over the 60 MiB budget" >&2; exit 1
fi
