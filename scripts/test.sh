#!/usr/bin/env bash
# Set up .venv (if missing) with the dev extras and run the default test suite (no slow or gpu tests).
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow
set -euo pipefail
source "$(dirname "$0")/_venv.sh" "[dev,server,ray,disclosure]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
echo "==> ruff"
.venv/bin/ruff check safeguard tests scripts
.venv/bin/ruff format --check safeguard tests scripts
echo "==> building the static MiniLM table and the ONNX exports once (cached; test workers would race to build them)"
.venv/bin/python -c "from safeguard.semantic import OnnxMiniLMEncoder, StaticMiniLMEncoder
StaticMiniLMEncoder.load()
OnnxMiniLMEncoder.load()
OnnxMiniLMEncoder.load_student()"
echo "==> pytest"
.venv/bin/python -m pytest -n 2 "$@"
