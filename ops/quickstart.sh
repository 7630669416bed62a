#!/usr/bin/env bash
# One command for a newcomer: install everything, then run Cairn's main job on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
exec .venv/bin/cairn demo "$@"
