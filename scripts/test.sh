#!/usr/bin/env bash
# Set up, then lint (ruff), type-check (mypy) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
ruff check .
mypy common client server simulations
python -m pytest -q -ra --durations=25 "$@"
