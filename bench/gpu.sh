#!/usr/bin/env bash
# GPU checks and figures (bench/gpu.py) on a machine with an NVIDIA GPU and this project set up
# (`make setup`: the pinned CUDA builds of torch and onnxruntime-gpu). About 5 minutes on an H200;
# writes "## GPU" in docs/benchmarks.md. CI never runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 540 .venv/bin/python bench/gpu.py --write-docs "$@"
