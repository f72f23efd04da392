"""Jobs as directories, run in their own process; one GPU job at a time, the others queue. A job trains a LoRA
(its config a TrainConfig) or builds a preference dataset (a PairsConfig, `preference.builder`).

A job directory holds `config.json` (the config), `job.json` (where the result is exported), `status.json`
(queued, running, finished, failed, cancelled, with a reason), `metrics.jsonl` (one line per training step or per
video made), `log.txt`; a training job also `checkpoints/step-NNNNNN/` (the LoRA in the published format plus the
optimizer state), `samples/`, and the final `lora.safetensors`; a pair job the growing `dataset/`. Every file is
replaced atomically; nodes and the CLI only read these files.
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

from ...reward.files import atomic_folder, atomic_path, write_json_atomic, write_text_atomic
from ..config import TrainConfig, read_settings
from ..preference.config import KIND as PAIRS, PairsConfig

JobConfig = TrainConfig | PairsConfig

STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE = ("queued", "running")
PACKAGE = "video_reward_lora"
PACK_ROOT = Path(__file__).resolve().parents[2]
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

    def config(self) -> JobConfig:
        return load_config(self.path / "config.json")

    def settings(self) -> dict[str, Any]:
        """config.json as it was written (readable even when a setting in it is refused now)."""
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def builds_pairs(self) -> bool:
        """Whether the job builds a preference dataset (its config says "kind": "preference_pairs")."""
        return self.settings().get("kind") == PAIRS

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
        """The recorded status; a queued or running job with no live process behind it (killed, crashed, or never
        started) reads as failed, and resumable."""
        status = self._read_status() or {"state": "queued"}
        if status.get("state") in ACTIVE and not _alive(status.get("pid")):
            step = self.latest_checkpoint_step()
            what = ("the job process stopped without finishing (killed or crashed)" if status.get("pid")
                    else "the job was never started (its start was interrupted)")
            where = "the videos not made yet" if self.builds_pairs() else \
                f"the checkpoint at step {step}" if step else "the start"
            status = {**status, "state": "failed", "resumable": True, "reason": f"{what}; resume continues from {where}"}
        return status

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One line more; a write that fails part-way (a full disk) is cut off again, so no partial line stays."""
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            size = handle.tell()
            try:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(size)
                raise

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
        write_text_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

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

    def clear_cancel(self) -> None:
        """Forget an earlier cancel request (a job started again runs)."""
        (self.path / "cancel").unlink(missing_ok=True)

    def cancel_requested(self) -> bool:
        return (self.path / "cancel").exists()


def _result(config: JobConfig) -> str:
    return "dataset" if isinstance(config, PairsConfig) else "LoRA"


def load_config(path: Path) -> JobConfig:
    """A job's config from its JSON file: a preference-pair job's (its "kind" says so) or a training job's."""
    data = read_settings(path)
    return (PairsConfig if data.get("kind") == PAIRS else TrainConfig).from_dict(data)


def create_job(jobs_root: Path, config: JobConfig, export_to: Path | None = None, name: str = "") -> Job:
    """A new job directory with its config, its info and a status (queued, no process yet); `export_to` is where
    the finished LoRA is also copied. All or nothing: the folder is filled under a temporary name and renamed."""
    config.validate()
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{name or config.family}-{uuid.uuid4().hex[:6]}"
    path = Path(jobs_root) / job_id
    with atomic_folder(path) as staging:
        write_text_atomic(staging / "config.json", config.to_json())
        write_json_atomic(staging / "job.json", {"id": job_id, "created": time.time(),
                                                 "export_to": str(export_to) if export_to else None})
        write_json_atomic(staging / "status.json", {"state": "queued", "reason": "created, not started yet",
                                                    "pid": None, "updated": time.time()})
    return Job(path)


def find_job(jobs_root: Path, job_id: str) -> Job:
    """The job `job_id`: a plain folder name inside `jobs_root` (no path, no `.`/`..`, no hidden name)."""
    path = Path(jobs_root) / job_id
    plain = bool(job_id) and Path(job_id).name == job_id and "\\" not in job_id and not job_id.startswith(".")
    if not plain or not (path / "config.json").is_file():
        raise FileNotFoundError(f"there is no training job '{job_id}' in {jobs_root}")
    return Job(path)


def settings_changed(job: Job, config: JobConfig) -> list[str]:
    """The settings in which `config` differs from the job's config.json, read as it is (a job that failed on a
    setting that is refused now still compares)."""
    old, new = job.settings(), json.loads(config.to_json())
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def reuse(job: Job, config: JobConfig) -> str:
    """What a new request for `config` does with the existing `job` that makes the same LoRA or dataset:

    - "keep": same settings and the job is queued, running or finished (nothing to start);
    - "resume": failed or cancelled, and the settings are the same or differ only in the config's `resumable` ones
      (what was done stays valid; the new settings are written to the job and it restarts from its last checkpoint);
    - "replace": failed or cancelled with settings that change the training (a new job starts from step 0).
    A queued, running or finished job with other settings raises FileExistsError."""
    status = job.status()
    state = status.get("state")
    changed = settings_changed(job, config)
    if not changed:
        return "keep" if state in ACTIVE + ("finished",) else "resume"
    if state in ACTIVE + ("finished",):
        what = "cancel it first" if state in ACTIVE else "delete its folder to train it again"
        raise FileExistsError(f"job {job.id}, which makes this {_result(config)}, is {state} with other settings "
                              f"({', '.join(changed)}); choose another {_result(config)} name, or {what}")
    return "resume" if set(changed) <= set(config.resumable) else "replace"


def open_job(jobs_root: Path, config: JobConfig, export_to: Path, name: str = "") -> tuple[Job, str]:
    """The job that trains `config` into `export_to` and what to do with it: ("keep", the job as it is), ("resume",
    an earlier job updated to `config`), ("new", a new job), or ("replace", a new job that replaces a failed or
    cancelled one with other settings; the old folder stays, with its checkpoints, as a job that exports nothing)."""
    job = job_exporting_to(jobs_root, export_to)
    if job is None:
        if export_to.exists():
            raise FileExistsError(f"{export_to} exists already and no job made it; choose another {_result(config)} name")
        return create_job(jobs_root, config, export_to, name), "new"
    action = reuse(job, config)
    if action == "resume" and settings_changed(job, config):
        write_text_atomic(job.path / "config.json", config.to_json())
    if action != "replace":
        return job, action
    new = create_job(jobs_root, config, export_to, name)
    write_json_atomic(job.path / "job.json", {**job.info(), "export_to": None, "replaced_by": new.id})
    return new, action


def job_exporting_to(jobs_root: Path, path: Path) -> Job | None:
    """The newest job in `jobs_root` whose result (a LoRA, a dataset) goes to `path`, if any."""
    for info in sorted(Path(jobs_root).glob("*/job.json"), reverse=True):
        if info.parent.name.startswith("."):  # a job folder still being created
            continue
        job = Job(info.parent)
        if job.info().get("export_to") == str(path):
            return job
    return None


def start(job: Job) -> subprocess.Popen:
    """Run the job in a new process (its output goes to log.txt); returns at once."""
    state = job.status().get("state")
    if state in ACTIVE:
        raise RuntimeError(f"job {job.id} is already {state}")
    job.clear_cancel()
    try:
        with open(job.log, "a", encoding="utf-8") as log:  # the child keeps its own copy of the handle
            process = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, str(PACK_ROOT), "run-job", str(job.path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
    except OSError as err:
        job.set_status("failed", f"the job process could not start: {err}", resumable=True)
        raise
    job.set_status("queued", "waiting for the GPU", pid=process.pid)
    return process


def export_lora(job: Job) -> Path | None:
    """Copy the finished LoRA to the job's export folder (e.g. models/loras); returns the copy."""
    target = job.info().get("export_to")
    if not target or not job.lora.is_file():
        return None
    destination = Path(target)
    with atomic_path(destination) as temporary:
        shutil.copyfile(job.lora, temporary)
    return destination
