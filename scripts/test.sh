#!/usr/bin/env bash
# Set up (with the system packages tests need), then run the test suite.
# Extra arguments go to pytest (e.g. -m slow for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest "$@"
