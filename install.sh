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
# torch and torchvision first, exactly, as one pair. Why not torch 2.13.0, the CPU-only build this
# project's CPU machines hold on disk? nnunetv2 -> timm -> torchvision, and no torchvision on PyPI loads
# beside that build ("operator torchvision::nms does not exist"). Uninstalling torchvision lets nnU-Net's
# modules import, but nnU-Net finds a trainer by name (nnUNetv2_train -tr, nnUNetv2_predict of a model
# trained with a custom trainer) by importing every trainer module, the Primus ones included, which need
# timm and so torchvision: every custom trainer lookup crashed. 2.14.1 + 0.29.1 is a matching pair
# (CUDA builds, which also run on a CPU); pip on the project's CPU machines takes both from local disk.
pip install --quiet torch==2.14.1 torchvision==0.29.1
pip install --quiet -r requirements.txt -r requirements-dev.txt
pip install --quiet --no-deps -e .
"$VENV/bin/python" -c "import torchvision, nnunetv2.training.nnUNetTrainer.nnUNetTrainer, pancreas_mtl; print('stack imports fine')"
