#!/usr/bin/env bash
# Installs Cairn and its test tools into ./.venv (created if missing), building the native core.
# Idempotent: run it again after pulling to rebuild. Needs Python >= 3.11 with venv and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "setup: no C compiler found; install one (Debian: apt-get install build-essential)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv || { echo "setup: '$PYTHON -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
