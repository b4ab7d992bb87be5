#!/usr/bin/env bash
# Set up .venv (if missing) and run `safeguard demo`: protect a tiny offline pipeline, run one allowed and one
# blocked prompt, and write the images and verdicts to ./safeguard-demo (or the folder given as $1).
set -euo pipefail
# An explicit extras argument: without one, the sourced script would read this one's $1 as its extras. The
# disclosure extra lets `safeguard verify` read the demo's watermarked images and their credentials.
source "$(dirname "$0")/_venv.sh" "[disclosure]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/safeguard demo --out "${1:-safeguard-demo}"
