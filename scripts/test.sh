#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite: the command CI runs.
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k config       # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
