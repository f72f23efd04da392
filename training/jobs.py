"""Training jobs as directories, run in their own process; one GPU job at a time, the others queue.

A job directory holds `config.json` (the TrainConfig), `job.json` (where the LoRA is exported), `status.json`
(queued, running, finished, failed, cancelled, with a reason), `metrics.jsonl` (one line per step), `log.txt`,
`checkpoints/step-NNNNNN/` (the LoRA in the published format plus the optimizer state), `samples/`, and the
final `lora.safetensors`. Every file is replaced atomically; nodes and the CLI only read these files.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..reward.files import write_json_atomic
from .config import TrainConfig

STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE = ("queued", "running")
PACKAGE = "video_reward_lora"
PACK_ROOT = Path(__file__).resolve().parents[1]
# Imports the pack (whatever its folder is called under custom_nodes) as `video_reward_lora` without running its
# ComfyUI entry point, then runs the CLI: the job process never imports ComfyUI.
BOOTSTRAP = (
    "import sys, types; root = sys.argv[1]; "
    f"sys.modules.setdefault('{PACKAGE}', types.ModuleType('{PACKAGE}')).__path__ = [root]; "
    f"from {PACKAGE}.training.cli import main; main(sys.argv[2:])"
)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass(frozen=True)
class Job:
    """A job directory and the operations on its files."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def lora(self) -> Path:
        return self.path / "lora.safetensors"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    def config(self) -> TrainConfig:
        return TrainConfig.load(self.path / "config.json")

    def info(self) -> dict[str, Any]:
        path = self.path / "job.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def set_status(self, state: str, reason: str = "", **extra: Any) -> None:
        if state not in STATES:
            raise ValueError(f"unknown job state '{state}'")
        previous = self._read_status()
        write_json_atomic(self.path / "status.json", {**previous, "pid": os.getpid(), **extra, "state": state,
                                                      "reason": reason, "updated": time.time()})

    def _read_status(self) -> dict[str, Any]:
        path = self.path / "status.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def status(self) -> dict[str, Any]:
        """The recorded status; a queued or running job whose process is gone reads as failed (and resumable)."""
        status = self._read_status() or {"state": "queued", "reason": "starting"}
        if status["state"] in ACTIVE and status.get("pid") and not _alive(status["pid"]):
            step = self.latest_checkpoint_step()
            status = {**status, "state": "failed", "resumable": True,
                      "reason": "the job process stopped without finishing (killed or crashed); resume continues from "
                      + (f"the checkpoint at step {step}" if step else "the start")}
        return status

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
        return records

    def truncate_metrics(self, step: int) -> None:
        """Drop the records after `step` (a resumed job repeats those steps)."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        temporary = self.path / ".metrics.jsonl.tmp"
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(temporary, self.path / "metrics.jsonl")

    def checkpoint_dirs(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoint_dirs()
        return found[-1] if found else None

    def latest_checkpoint_step(self) -> int:
        latest = self.latest_checkpoint()
        return int(latest.name.removeprefix("step-")) if latest else 0

    def request_cancel(self) -> None:
        (self.path / "cancel").touch()

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()


def create_job(jobs_root: Path, config: TrainConfig, export_to: Path | None = None, name: str = "") -> Job:
    """A new job directory with its config; `export_to` is where the finished LoRA is also copied."""
    config.validate()
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{name or config.family}-{uuid.uuid4().hex[:6]}"
    path = Path(jobs_root) / job_id
    path.mkdir(parents=True)
    (path / "config.json").write_text(config.to_json())
    write_json_atomic(path / "job.json", {"id": job_id, "created": time.time(),
                                          "export_to": str(export_to) if export_to else None})
    return Job(path)


def find_job(jobs_root: Path, job_id: str) -> Job:
    path = Path(jobs_root) / job_id
    if not job_id or "/" in job_id or "\\" in job_id or not (path / "config.json").is_file():
        raise FileNotFoundError(f"there is no training job '{job_id}' in {jobs_root}")
    return Job(path)


def job_exporting_to(jobs_root: Path, path: Path) -> Job | None:
    """The job in `jobs_root` whose finished LoRA is copied to `path`, if any."""
    for info in sorted(Path(jobs_root).glob("*/job.json")):
        job = Job(info.parent)
        if job.info().get("export_to") == str(path):
            return job
    return None


def start(job: Job) -> subprocess.Popen:
    """Run the job in a new process (its output goes to log.txt); returns at once."""
    state = job.status().get("state")
    if state in ACTIVE and (job.path / "status.json").exists():
        raise RuntimeError(f"job {job.id} is already {state}")
    (job.path / "cancel").unlink(missing_ok=True)
    job.set_status("queued", "waiting for its process to start")
    with open(job.log, "a", encoding="utf-8") as log:  # the child keeps its own copy of the handle
        process = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(PACK_ROOT), "run-job", str(job.path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    job.set_status("queued", "waiting for the GPU", pid=process.pid)
    return process


def export_lora(job: Job) -> Path | None:
    """Copy the finished LoRA to the job's export folder (e.g. models/loras); returns the copy."""
    target = job.info().get("export_to")
    if not target or not job.lora.is_file():
        return None
    destination = Path(target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(job.lora, temporary)
    os.replace(temporary, destination)
    return destination
