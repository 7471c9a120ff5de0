#!/usr/bin/env bash
# Creates .venv with speechfuse, its bundled real models and test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch pinned: 2.13.0 is the CPU wheel on these machines; an unpinned torch pulls a multi-GB CUDA build
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[bundled,dev,export,search,cluster]"
# These two ship real pretrained weights but declare dependencies that do not install here
# (openwakeword 0.5.1 wants tflite-runtime; resemblyzer wants webrtcvad/librosa). speechfuse only
# reads their weight files, so install them without dependencies.
.venv/bin/pip install -q --no-deps "resemblyzer==0.1.4" "openwakeword==0.5.1"
echo "speechfuse installed in $(pwd)/.venv"
