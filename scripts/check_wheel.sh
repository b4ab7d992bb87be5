#!/usr/bin/env bash
# Build the wheel from the committed tree, install it alone (no extras) into a fresh virtualenv, and run what a
# new user runs first: `safeguard --version`, `safeguard demo`, `safeguard check "a cat"` and
# `echo "a cat" | safeguard check -`, each timed, with a fresh cache folder so the first call's preparation shows.
# Usage: scripts/check_wheel.sh [WORKDIR]   (default: a new temporary folder, removed afterwards)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-}"
if [ -z "$work" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
python="${PYTHON:-python3}"
pip=(--disable-pip-version-check -q)

echo "==> building the wheel from the committed tree"
# A clone, so that the build leaves nothing in the checkout and uncommitted files cannot slip into the wheel.
rm -rf "$work/src" "$work/dist"
git clone -q "$root" "$work/src"
"$python" -m pip wheel "${pip[@]}" --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/diffusers_safeguard-*.whl)"
echo "    $wheel"

echo "==> a fresh virtualenv with only the wheel (and its dependencies)"
"$python" -m venv "$work/venv"
venv_pip=("$work/venv/bin/python" -m pip "${pip[@]}")
# As in scripts/_venv.sh: take the local CPU torch where one is offered, and refuse torchvision / opencv-python.
"${venv_pip[@]}" install "torch==2.13.0+cpu" || "${venv_pip[@]}" install torch
"${venv_pip[@]}" install -c "$root/scripts/constraints.txt" "$wheel"
# A reused WORKDIR already has this version installed: put the freshly built wheel in all the same.
"${venv_pip[@]}" install --force-reinstall --no-deps "$wheel"

rm -rf "$work/cache" "$work/demo"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 XDG_CACHE_HOME="$work/cache"
cd "$work"
bin="$work/venv/bin"
run() {  # run a command, print its wall time, keep its exit status
  echo "==> $*"
  local start rc=0
  start=$(date +%s%N)
  "$@" || rc=$?
  printf '    (%s ms)\n' "$(( ($(date +%s%N) - start) / 1000000 ))"
  return "$rc"
}
run "$bin/safeguard" --version
run "$bin/safeguard" demo --out "$work/demo"
set +e
run "$bin/safeguard" check "a cat"
status=$?
echo "    exit $status"
echo "a cat" | run "$bin/safeguard" check -
status_stdin=$?
set -e
echo "    exit $status_stdin"
[ "$status" -eq 0 ] && [ "$status_stdin" -eq 0 ]
