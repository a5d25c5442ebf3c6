#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its test tools.
# torch is pinned first: here `torch==2.13.0` is a local CPU build; an unpinned torch would
# pull a multi-gigabyte CUDA build. The project's own range (torch>=2.4,<3) accepts it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
python -c "import torch, flwr, opacus, peft, transformers; print('setup ok: torch', torch.__version__, '| flwr', flwr.__version__, '| opacus', opacus.__version__, '| peft', peft.__version__, '| transformers', transformers.__version__)"
