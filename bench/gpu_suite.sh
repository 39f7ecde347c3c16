#!/usr/bin/env bash
# GPU acceptance suite, one command (bench/gpu_suite.py says what it runs and records):
#   bash bench/gpu_suite.sh            # on a machine with one CUDA GPU, < 8 min
#   bash bench/gpu_suite.sh --smoke    # CPU, tiny model: what the test suite runs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$PYTHON" bench/gpu_suite.py "$@"
