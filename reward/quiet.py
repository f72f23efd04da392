"""Quieter libraries in the processes the pack owns (the demos, the command line, the job process): their info and
warning logs and weight-loading progress bars are hidden, so what is printed is the pack's own progress and results
(and the libraries' errors). Never called when ComfyUI imports the pack: ComfyUI's log settings stay its own."""
from __future__ import annotations

import logging


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    """Set transformers and diffusers to errors only without progress bars, and DeepSpeed to errors only."""
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (transformers.utils.logging, diffusers.utils.logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    # DeepSpeed sets its logger's level when it is imported (which accelerate does), so a filter is what lasts
    deepspeed = logging.getLogger("DeepSpeed")
    if _errors_only not in deepspeed.filters:
        deepspeed.addFilter(_errors_only)
