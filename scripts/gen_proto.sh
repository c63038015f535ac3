#!/usr/bin/env bash
# Regenerates the Python gRPC stubs of serving/proto/pagedjax/v1/pagedjax.proto.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: the repository root, i.e.
# the stubs land next to the .proto; tests pass a temp dir to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-.}"
PY="${PYTHON:-.venv/bin/python}"
# NOTE: -I . makes the generated imports absolute (serving.proto.pagedjax.v1),
# so the stubs import without touching sys.path.
"$PY" -m grpc_tools.protoc -I . \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  serving/proto/pagedjax/v1/pagedjax.proto
