#!/usr/bin/env bash
# Create .venv/ and install distlm with everything it needs. Idempotent: a second run is a no-op.
#   - torch first, so nothing that depends on it pulls a different build: the CUDA build from
#     PyPI when an NVIDIA GPU is present, else the CPU build torch==2.13.0 (set TORCH_INDEX_URL,
#     e.g. https://download.pytorch.org/whl/cpu, to choose where pip looks). A torch you installed
#     into .venv yourself is kept.
#   - then distlm (editable) with DeepSpeed and the dev tools, constrained to that torch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
PIP=".venv/bin/python -m pip"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.distlm-installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    index=()
    [ -n "${TORCH_INDEX_URL:-}" ] && index=(--index-url "$TORCH_INDEX_URL")
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
      $PIP install -q "${index[@]}" torch
    else
      echo "setup: no NVIDIA GPU, installing the CPU build torch==2.13.0"
      $PIP install -q "${index[@]}" torch==2.13.0 numpy
    fi
  fi
  torch_version=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
  constraints=$(mktemp)
  echo "torch==${torch_version}" > "$constraints"
  echo "setup: installing distlm[deepspeed,dev] against torch ${torch_version}"
  $PIP install -q -c "$constraints" -e ".[deepspeed,dev]"
  rm -f "$constraints" .venv/.distlm-installed-*
  touch "$stamp"
fi
