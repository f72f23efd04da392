#!/usr/bin/env bash
# Creates .venv with the CPU torch pinned and the pack's requirements, plus pytest and deepspeed (its ZeRO tests run on
# CPU processes). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt pytest deepspeed
# the repository root as the importable package `video_reward_lora` (tests, demo and CLI import it so)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
