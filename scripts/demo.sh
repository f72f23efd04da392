#!/usr/bin/env bash
# Sets up .venv (first run) and runs the pack's main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m video_reward_lora.training.demo "$@"
