#!/usr/bin/env bash
# Creates .venv with the workflow's pinned stack and the pancreas_mtl package (editable).
# Usage: bash install.sh            (PYTHON=python3.11 bash install.sh to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install --quiet --upgrade pip
# torch alone and first, exactly pinned: every other torch spec resolves to a multi-GB CUDA build.
pip install --quiet torch==2.13.0
pip install --quiet -r requirements.txt -r requirements-dev.txt
# nnunetv2 -> timm -> torchvision from PyPI. Beside a CPU-only torch build that torchvision fails to
# load its C++ operators ("operator torchvision::nms does not exist"), and since timm imports it,
# every nnU-Net import fails. nnU-Net itself never needs torchvision, so drop it where it is broken;
# where it imports (a CUDA torch on a GPU machine) it stays.
if "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    echo "torchvision imports beside this torch; keeping it"
else
    echo "torchvision is broken beside this torch build; uninstalling it (nnU-Net does not need it)"
    pip uninstall --quiet -y torchvision || true
fi
pip install --quiet --no-deps -e .
"$VENV/bin/python" -c "import nnunetv2.training.nnUNetTrainer.nnUNetTrainer, pancreas_mtl; print('stack imports fine')"
