#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run every stage on a generated multi-shop dataset
# (or pass your own: ./scripts/run.sh --data FILE --format rees46 --out runs/mine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/simpersona run "$@"
