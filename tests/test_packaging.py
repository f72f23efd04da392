"""Packaging: the requirements leave ComfyUI's torch alone, agree with pyproject, and pass comfy-cli's checks."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_agree_with_pyproject_and_never_name_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_requirements()) == sorted(project["dependencies"])
    names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in _requirements()}
    assert not names & {"torch", "torchvision", "torchaudio"}


@pytest.mark.skipif(not os.environ.get("COMFYUI_PYTHON"), reason="COMFYUI_PYTHON is not set")
def test_installing_requirements_into_comfyui_keeps_its_torch(tmp_path):
    report = tmp_path / "report.json"
    subprocess.run([os.environ["COMFYUI_PYTHON"], "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                    "-r", str(ROOT / "requirements.txt")], check=True, timeout=300)
    would_install = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert not would_install & {"torch", "torchvision", "torchaudio"}, would_install


@pytest.mark.skipif(not (os.environ.get("COMFY_CLI") or shutil.which("comfy")), reason="comfy-cli is not installed")
def test_comfy_node_validate_and_pack(tmp_path):
    comfy = os.environ.get("COMFY_CLI") or shutil.which("comfy")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp_path / "pack")], check=True)
    for name in ("pyproject.toml", "requirements.txt"):  # the working tree's, committed or not
        shutil.copy(ROOT / name, tmp_path / "pack" / name)
    flags = ["--skip-prompt", "--no-enable-telemetry"]
    validate = subprocess.run([comfy, *flags, "node", "validate"], cwd=tmp_path / "pack", capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0 and "passed" in validate.stdout + validate.stderr, validate.stdout + validate.stderr
    subprocess.run([comfy, *flags, "node", "pack"], cwd=tmp_path / "pack", check=True, capture_output=True, timeout=300)
    import zipfile

    names = zipfile.ZipFile(tmp_path / "pack" / "node.zip").namelist()
    assert "__init__.py" in names and "nodes/training.py" in names and any(n.startswith("workflows/api/") for n in names)
    assert "web/video_reward.js" in names and any(n.startswith("workflows/") and n.endswith(".jpg") for n in names)
