"""DeepSpeed ZeRO (stages 1-3, with optional CPU offload), used when the job runs under `accelerate launch` with a
DeepSpeed config: the trained transformer becomes a DeepSpeed engine that partitions the LoRA's optimizer state and
gradients (stage 3: also every weight of that transformer) across the processes.

The training config decides what it already says (batch size, accumulation, gradient clipping, precision, the
optimizer); the DeepSpeed config decides how ZeRO partitions and offloads. Checkpoints hold the whole float32 LoRA and
AdamW state, gathered from the partitions, in the file format of every other run.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ..engine.checkpoint import State, pack_state, read_state

ADAM_STATES = ("exp_avg", "exp_avg_sq")


def launched() -> bool:
    """Whether this process was started by `accelerate launch` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(cpu: bool) -> Any:
    """The job's accelerator. DeepSpeed on a machine without GPUs needs gloo named, as accelerate finds no backend."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if not launched():
        return Accelerator(cpu=cpu)
    accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu else None)
    from transformers.integrations import unset_hf_deepspeed_config

    # else under stage 3 transformers builds every model partitioned, also the text encoders and the reward, which run
    # outside the engine; the engine partitions its own transformer
    unset_hf_deepspeed_config()
    return accelerator


def in_use(accelerator: Any) -> bool:
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def configure(accelerator: Any, config: Any) -> list[str]:
    """Write the training config's batch, accumulation, clipping and precision into the DeepSpeed config; returns a
    line for every launch-config value this replaced."""
    if config.fsdp:
        raise ValueError('"fsdp": true and a DeepSpeed launch config both shard the model; choose one')
    if config.optimizer != "adamw":
        raise ValueError(f"the {config.optimizer} optimizer does not work on ZeRO partitions; use adamw with DeepSpeed")
    settings = accelerator.state.deepspeed_plugin.deepspeed_config
    for section in ("optimizer", "scheduler"):
        if section in settings:
            raise ValueError(f'remove the "{section}" section from the DeepSpeed config: the training config\'s optimizer '
                             "settings (learning_rate, weight_decay, adam_eps) are used")
    ours = {"train_micro_batch_size_per_gpu": config.batch_size, "gradient_accumulation_steps": config.accumulation,
            "train_batch_size": config.batch_size * config.accumulation * accelerator.num_processes,
            "gradient_clipping": config.max_grad_norm}
    notes = [f"DeepSpeed {key} {settings[key]} replaced by the training config's {value}"
             for key, value in ours.items() if settings.get(key, "auto") not in ("auto", value)]
    settings.update(ours)
    for precision in ("bf16", "fp16"):
        enabled = settings.get(precision, {}).get("enabled", False)  # True, False or "auto"
        if enabled is True:
            notes.append(f"DeepSpeed {precision} turned off: the training config's precision ({config.precision}) sets "
                         "the weights' dtype and the LoRA trains in float32")
        if enabled:
            settings[precision] = {"enabled": False}
    zero = settings.setdefault("zero_optimization", {})
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        settings.setdefault("zero_force_ds_cpu_optimizer", False)  # torch's AdamW on the (small) offloaded LoRA state
    return notes


def gathered(params: Iterable[torch.nn.Parameter], modify: bool = False) -> contextlib.AbstractContextManager:
    """Inside, stage-3 partitioned `params` are whole on every process (a collective call); with `modify`, what the
    main process writes into them is kept."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def gather_state(step: int, params: dict[str, torch.nn.Parameter], engine: Any) -> State:
    """The trainer state in the checkpoint format of every run: whole float32 LoRA weights and AdamW state, gathered
    from the partitions (a collective call)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    with gathered(params.values()):
        whole = {name: p.detach().float().cpu() for name, p in params.items()}
    adam_step = _step(engine)
    states = {} if adam_step is None else {
        index: {"step": adam_step.clone(), **{key: safe_get_full_optimizer_state(p, key).detach().float().cpu()
                                              for key in ADAM_STATES}}
        for index, p in enumerate(params.values())}
    hyper = {k: v for k, v in engine.optimizer.optimizer.param_groups[0].items() if k != "params"}
    return pack_state(step, whole, states, [{**hyper, "params": list(range(len(params)))}])


def load_state(folder: Path, params: dict[str, torch.nn.Parameter], engine: Any) -> int:
    """Put a checkpoint's whole LoRA weights and AdamW state into the engine's partitions (every process calls this);
    returns its step."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    step, values, states, _ = read_state(folder, list(params))
    with gathered(params.values(), modify=True), torch.no_grad():
        for param, value in zip(params.values(), values):
            param.copy_(value.to(param.device, param.dtype))
    for param, value in zip(params.values(), values):
        safe_set_full_fp32_param(param, value.to(torch.float32))
    if not states:
        return step
    adam_step = next(iter(states.values()))["step"]
    for flat in _partitions(engine):  # AdamW creates its state lazily; create it so the partitions can be filled
        engine.optimizer.optimizer.state[flat] = {"step": adam_step.clone().float(),
                                                  **{k: torch.zeros_like(flat) for k in ADAM_STATES}}
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # stages 1-2 map each parameter into the new state only when asked (else at the first step)
        link()
    for index, param in enumerate(params.values()):
        for key in ADAM_STATES:
            safe_set_full_optimizer_state(param, states[index][key], key)
    return step


def _step(engine: Any) -> torch.Tensor | None:
    """AdamW's step count (the same for every partition); None before the first step."""
    for state in engine.optimizer.optimizer.state.values():
        if "step" in state:
            return torch.as_tensor(state["step"], dtype=torch.float32).cpu()
    return None


def _partitions(engine: Any) -> list[torch.Tensor]:
    """This process's flat float32 partitions of the LoRA, the tensors ZeRO's AdamW steps (stage 3, stages 1-2)."""
    optimizer = engine.optimizer
    return getattr(optimizer, "fp32_partitioned_groups_flat", None) or optimizer.single_partition_of_fp32_groups
