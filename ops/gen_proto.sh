#!/usr/bin/env bash
# Regenerates the Python modules for proto/*.proto into cluster/proto/ (they are committed, so
# installing Cairn needs no protoc). Needs grpcio-tools: pip install grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m grpc_tools.protoc -I proto --python_out=cluster/proto --grpc_python_out=cluster/proto proto/*.proto
# grpc_tools writes absolute imports of sibling modules; make them package-relative.
sed -i -E 's/^import ([a-z_]+_pb2) as/from cluster.proto import \1 as/' cluster/proto/*_pb2_grpc.py
