#!/usr/bin/env bash
# One command for the whole test suite: install everything, then run every test.
# Extra arguments go to pytest (e.g. `bash ops/test.sh tests/test_rs.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
exec .venv/bin/python -m pytest -q "$@"
