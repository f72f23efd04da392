"""Reward-LoRA training and preference-pair building from the command line, without ComfyUI.

    python -m video_reward_lora.training.cli run --config train.json --output runs/my-lora
    accelerate launch --num_processes 8 -m video_reward_lora.training.cli run --config train.json --output runs/my-lora
    python -m video_reward_lora.training.cli start --config train.json --jobs-root runs   # in the background
    python -m video_reward_lora.training.cli status runs/my-lora
    python -m video_reward_lora.training.cli cancel runs/my-lora
    python -m video_reward_lora.training.cli resume runs/my-lora                         # in the background
    python -m video_reward_lora.training.cli run --config pairs.json --output runs/my-pairs  # a preference dataset

`run` works in the foreground (and under accelerate launch); running it again on the same output resumes from the
latest checkpoint. The config is a JSON object of TrainConfig fields, or of PairsConfig fields with
"kind": "preference_pairs" for a job that builds a preference dataset (see README).
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from ..reward.files import write_json_atomic, write_text_atomic
from ..reward.quiet import quiet_libraries
from .jobs.jobs import Job, JobConfig, create_job, load_config, reuse, start


def prepare(output: Path, config: JobConfig) -> Job:
    """`output` as a job directory for `config`: the same config, or one that differs only in settings that keep
    resuming exact (the config's `resumable` ones), resumes the job there; any other config is refused."""
    output.mkdir(parents=True, exist_ok=True)
    existing = output / "config.json"
    if existing.is_file():
        try:
            action = reuse(Job(output), config)
        except FileExistsError as err:
            raise SystemExit(f"{output}: {err}") from None
        if action == "replace":
            raise SystemExit(f"{output} holds a job with other settings that change its result (only "
                             f"{', '.join(config.resumable)} may change on a resume); choose a new --output "
                             "(or run without --config to resume)")
    write_text_atomic(existing, config.to_json())
    if not (output / "job.json").is_file():
        write_json_atomic(output / "job.json", {"id": output.name, "export_to": None})
    return Job(output)


class _Tee:
    """A text stream that writes to a terminal stream and a log file at once."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding: the terminal's
        return getattr(self.stream, name)


@contextmanager
def teed(log_path: Path) -> Iterator[None]:
    """Inside, what is printed goes to the terminal and is appended to `log_path` too."""
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="video_reward_lora.training.cli", description="Train reward LoRAs and build preference datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job in the foreground (resumes the job already in the output)")
    run.add_argument("--config", type=Path, help="TrainConfig or PairsConfig JSON (omit to resume the job in --output)")
    run.add_argument("--output", type=Path, required=True, help="the job directory")
    background = commands.add_parser("start", help="create a job and run it in a background process")
    background.add_argument("--config", type=Path, required=True)
    background.add_argument("--jobs-root", type=Path, required=True)
    for name, text in (("run-job", "run an existing job directory"), ("status", "print a job's status"),
                       ("cancel", "ask a job to stop (it saves a checkpoint first)"), ("resume", "restart a job in the background")):
        commands.add_parser(name, help=text).add_argument("job", type=Path)
    args = parser.parse_args(argv)
    if args.command in ("run", "run-job"):
        quiet_libraries()

    from .jobs.runner import run_job

    config = None
    if getattr(args, "config", None) is not None:
        try:
            config = load_config(args.config)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))
    if args.command == "run":
        if config is not None:
            prepare(args.output, config)
        elif not (args.output / "config.json").is_file():
            parser.error(f"{args.output} holds no job; pass --config")
        job = Job(args.output)
        job.clear_cancel()  # running it again in the foreground resumes a cancelled job
        with teed(job.log):
            return 0 if run_job(args.output) in ("finished", "cancelled") else 1
    if args.command == "run-job":
        return 0 if run_job(args.job) in ("finished", "cancelled") else 1
    if args.command == "start":
        job = create_job(args.jobs_root, config)
        start(job)
        print(job.path)
        return 0
    job = Job(args.job)
    if not (job.path / "config.json").is_file():
        print(f"{job.path} is not a job directory", file=sys.stderr)
        return 2
    if args.command == "status":
        print(json.dumps({**job.status(), "metrics": job.metrics()[-1:]}, indent=2))
    elif args.command == "cancel":
        job.request_cancel()
        print(f"cancel requested for {job.id}")
    else:
        start(job)
        print(f"resumed {job.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
