#!/usr/bin/env bash
# Set everything up, then run the main job: train a tiny MiMo model on the built-in
# videos, sample, print metrics, write GIFs and plots (see `mimo demo --help`).
set -euo pipefail
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see src/mimo/cli.py
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mimo demo "$@"
