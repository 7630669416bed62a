#!/usr/bin/env bash
# One command for a newcomer: install everything, start a local cluster (3 meta, 6 data nodes on
# 127.0.0.1 under ./.cairn), take the tour (a dataset, dedup, a node killed, a degraded read),
# then stop the cluster. `.venv/bin/cairn dev up` keeps one running for you to use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
.venv/bin/cairn dev up --dir .cairn
trap '.venv/bin/cairn dev down --dir .cairn' EXIT
.venv/bin/cairn dev tour --dir .cairn "$@"
.venv/bin/cairn status
