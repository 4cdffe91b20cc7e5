#!/usr/bin/env bash
# Install medprobe into ./.venv and run the offline demo (phantom data, untrained encoder: a pipeline check).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh onnx
exec medprobe demo "$@"
