#!/usr/bin/env bash
# Sets up the real ComfyUI 0.8.0 that the integration tests run against, from ../shared/comfyui (source snapshot and
# torchvision stub), in a cache folder outside the repository, plus comfy-cli. Safe to re-run: a finished set-up is
# reused; pip's output goes to pip.log in each environment. Prints the environment variables the tests read (COMFYUI_PATH, COMFYUI_PYTHON, COMFYUI_PYTHONPATH,
# COMFY_CLI) as `export` lines for `eval`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
shared=${VIDEO_REWARD_SHARED:-../shared}
tarball=$(ls "$shared"/comfyui/ComfyUI-*.tar.gz 2>/dev/null | head -n 1)
if [ -z "$tarball" ]; then
  echo "setup_comfyui: no ComfyUI snapshot in $shared/comfyui; the real-ComfyUI tests will be skipped" >&2
  exit 0
fi
PYTHON=${PYTHON:-python3}
cache=${VIDEO_REWARD_COMFYUI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/video-reward-lora/$(basename "$tarball" .tar.gz)}
stubs=$(cd "$shared/comfyui/stubs" && pwd)
if [ ! -f "$cache/.ready" ]; then
  echo "setup_comfyui: building $cache (a few minutes, once)" >&2
  rm -rf "$cache"
  mkdir -p "$cache"
  tar -xzf "$tarball" -C "$cache"
  "$PYTHON" -m venv "$cache/venv"
  grep -v -E '^(torch|torchvision|torchaudio|spandrel)([<>=~ ].*)?$' "$cache/comfyui/requirements.txt" > "$cache/requirements.txt"
  pip_install "$cache/venv/bin/python" -c constraints.txt torch
  pip_install "$cache/venv/bin/python" -c constraints.txt -r "$cache/requirements.txt" requests
  pip_install "$cache/venv/bin/python" --no-deps spandrel
  "$PYTHON" -m venv "$cache/comfy-cli"
  pip_install "$cache/comfy-cli/bin/python" comfy-cli
  "$cache/comfy-cli/bin/comfy" --skip-prompt tracking disable >/dev/null 2>&1 || true
  touch "$cache/.ready"
fi
# the pack's requirements, as `comfy node install` puts them into ComfyUI's environment (re-run: they may change)
pip_install "$cache/venv/bin/python" -c constraints.txt -r requirements.txt
echo "export COMFYUI_PATH='$cache/comfyui' COMFYUI_PYTHON='$cache/venv/bin/python' COMFYUI_PYTHONPATH='$stubs' COMFY_CLI='$cache/comfy-cli/bin/comfy'"
