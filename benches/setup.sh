#!/usr/bin/env bash
# Installs the Python side of the benchmarks into benches/.venv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "benchmark Python ready: $here/.venv/bin/python"
