#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: Fashion-MNIST from Debian's
# package, a virtual environment in .venv with the pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"dpgan_tf needs Python 3.11 (TensorFlow 2.15 stops at 3.11; "
             f"the pinned scipy, matplotlib deps start at 3.11); "
             f"{sys.executable} is {sys.version.split()[0]}. Set PYTHON=...")
PY

packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
  packages+=(dataset-fashion-mnist)
# Debian's own python3 needs python3-venv for `python3 -m venv`.
[ -x .venv/bin/python ] || "$PYTHON" -c 'import ensurepip' 2>/dev/null ||
  packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${packages[@]}"
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
