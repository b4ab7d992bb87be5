# Sourced by scripts/test.sh and scripts/demo.sh: create .venv if missing and install the project into it.
# Usage: source scripts/_venv.sh [EXTRAS]   (EXTRAS e.g. "[dev]")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# On these CPU machines a local CPU build of torch is offered; take it before anything pulls the CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "==> installing torch (CPU build where one is offered)"
  "${pip[@]}" install "torch==2.13.0+cpu" || "${pip[@]}" install torch
fi
echo "==> installing diffusers-safeguard${1:-}"
# The constraints make pip fail loudly if torchvision or opencv-python would land next to the CPU torch.
"${pip[@]}" install -c scripts/constraints.txt -e ".${1:-}"
# The tiny test pipelines and the demo rebuild the real CLIP vocabulary from the BPE file inside the open_clip
# wheel. open_clip itself needs torchvision, which these CPU machines cannot have, so only the wheel's files are
# installed, without its dependencies (pip check will complain about that; nothing here relies on pip check).
"${pip[@]}" install --no-deps "open-clip-torch>=2.24"
# invisible-watermark is the reference the disclosure watermark is checked against (tests, scripts/eval_watermark.py).
# It requires opencv-python, which the constraints forbid; cv2 comes from opencv-python-headless, and its other
# dependencies (PyWavelets, onnxruntime, torch, Pillow, numpy) are installed above, so it goes in without them.
if [[ "${1:-}" == *dev* ]]; then
  "${pip[@]}" install --no-deps "invisible-watermark==0.2.0"
fi
