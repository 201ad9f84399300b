#!/usr/bin/env bash
# Installs the Python side of the benchmarks into benches/.venv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$here/.venv/bin/python" -c "import duckdb, grpc, grpc_tools.protoc, numpy, onnxruntime, pandas, pyarrow"
echo "benchmark Python ready: $here/.venv/bin/python"
