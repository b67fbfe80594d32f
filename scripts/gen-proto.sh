#!/bin/bash
# The one generator of unlinkwatch/pb/ from proto/: pinned grpcio-tools and mypy-protobuf (pyproject's
# dev extra). Package-qualified import root, so generated code imports `from unlinkwatch.pb import ...`.
# With --check it regenerates into a temp dir and fails on any difference from the committed files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=.
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
mkdir -p "$out/unlinkwatch/pb"
PATH="$(dirname "$PY"):$PATH" "$PY" -m grpc_tools.protoc -Iunlinkwatch/pb=proto \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/events.proto
if [ "${1:-}" = "--check" ]; then
  for f in events_pb2.py events_pb2.pyi events_pb2_grpc.py events_pb2_grpc.pyi; do
    cmp -s "$out/unlinkwatch/pb/$f" "unlinkwatch/pb/$f" || { echo "gen-proto: unlinkwatch/pb/$f is stale; run make proto" >&2; exit 1; }
  done
  echo "gen-proto: generated code up to date"
fi
