#!/usr/bin/env bash
# Creates .venv with the CPU torch pinned and the pack's requirements, plus pytest and deepspeed (its ZeRO tests run on
# CPU processes). Safe to re-run. pip's output goes to .venv/pip.log (shown when an install fails).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install .venv/bin/python -c constraints.txt torch
pip_install .venv/bin/python -c constraints.txt -r requirements.txt pytest deepspeed
# the repository root as the importable package `video_reward_lora` (tests, demo and CLI import it so)
pip_install .venv/bin/python --no-deps --no-build-isolation -e .
