#!/usr/bin/env bash
# Set up, then run the main job: `flwr run .` on ml-latest-small, 4 sites, local DP at
# epsilon 8 (see simulations/presets/main.toml), results in runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m simulations.federated --preset main --out "${1:-runs/main}"
