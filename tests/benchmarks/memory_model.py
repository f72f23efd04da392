"""Peak GPU memory and FLOPs of one training step at full size, modelled on fake tensors (no GPU, no weights in memory).

    python tests/benchmarks/memory_model.py                          # the table: 3 families x 2 methods x 2 option sets
    python tests/benchmarks/memory_model.py --family wan2.2 --method dpo --fp8-base --block-swap 38 --activation-offload
    python tests/benchmarks/memory_model.py --validate               # the model against measured RSS on the CPU

The pack's own engine runs one training step (`Engine.train_step`'s sequence: zero_grad, the method's loss under the
engine's autocast, backward, clip, AdamW step) of the real full-size architectures (CogVideoX-Fun 2B and EasyAnimate V5
12B at 256x256x49 with 50 steps, one Wan2.2 A14B expert at 256x256x81 with 40 steps; bf16, rank 128, guidance 6, an
HPS v2.1-sized reward: CLIP ViT-H/14 at 224x224) on torch's fake tensors: shapes and dtypes only. The modules are built on
the meta device (the LoRA injected there by the engine itself) and then turned into fake tensors, so nothing is
allocated. A TorchDispatchMode registers every storage an op creates, with a weakref finalizer for its free, and keeps
the live bytes by kind: frozen weights, LoRA, its gradients, AdamW state, activations (tensors autograd saves for the
backward, seen by a saved-tensor hook) and temporaries (everything else, including the activations a checkpointed block
recomputes in the backward). The peak is of their sum, which is what `torch.cuda.max_memory_allocated` reports up to the
caching allocator's rounding; the breakdown is the one at the peak. FLOPs come from `torch.utils.flop_counter`.

Only the first denoising step without gradients of each transformer runs: its activations and temporaries are freed
when it ends, so later ones reach the same peak; their FLOPs are those of the measured step times their count.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench_training import FULL, SMALL
from full_size import TRANSFORMERS, build_transformer, build_vae, full_size_text

GIB = 2**30
FULL_RANK = dict(rank=128, alpha=64.0)  # the seeds' Wan2.2 / EasyAnimate / CogVideoX official LoRAs
OVERRIDES = {"easyanimate": dict(num_layers=48, mmdit_layers=48)}  # V5 12B (full_size builds the 7B)
LABELS = {"cogvideox": "CogVideoX-Fun 2B", "easyanimate": "EasyAnimate V5 12B", "wan2.2": "Wan2.2 A14B expert"}
BLOCKS = {"cogvideox": "transformer_blocks", "easyanimate": "transformer_blocks", "wan2.2": "blocks"}
PROMPTS = ["a red ball rolling across a sunny field", "a cat in a field at dusk"]
IN_FLIGHT = 2  # swapped blocks on the GPU at once: the one running and the one being copied


def _cpu_sdpa(query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# CPU attention (what fake CPU tensors dispatch to) saves what the GPU's flash attention saves (output, logsumexp);
# the flop counter knows only the GPU kernels' names
CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}



class _GlobalOnly:
    """A stand-in for FlopCounterMode's module tracker that puts every op under "Global" (the tracker's backward
    hooks keep the tensors they see alive until the backward ends, which would distort the memory)."""

    parents = {"Global"}

    def __enter__(self) -> None:
        pass

    def __exit__(self, *args: Any) -> None:
        pass


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA)
    counter.mod_tracker = _GlobalOnly()
    return counter


WEIGHTS, LORA, GRADS, ADAM, ACTIVATIONS, TEMPORARIES, HOST = (
    "weights", "lora", "grads", "adam", "activations", "temporaries", "host")
DEVICE_KINDS = (WEIGHTS, LORA, GRADS, ADAM, ACTIVATIONS, TEMPORARIES)


def hps_v21_config():
    """CLIP ViT-H/14 (open_clip's, as HPS v2.1 ships it): 1280-wide 32-layer image tower at 224x224, 1024-wide text."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                         num_hidden_layers=24, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                           image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5),
        projection_dim=1024)


@dataclasses.dataclass(frozen=True)
class Options:
    """The memory options of a step, applied as the engine applies (or would apply) them."""

    fp8_base: bool = False
    block_swap: int = 0
    activation_offload: bool = False
    checkpointing: bool = True

    def label(self) -> str:
        parts = ["fp8"] if self.fp8_base else []
        parts += [f"swap {self.block_swap}"] if self.block_swap else []
        parts += ["act-offload"] if self.activation_offload else []
        parts += [] if self.checkpointing else ["no-ckpt"]
        return " + ".join(parts) or "default"


class DeviceMemory(TorchDispatchMode):
    """Live device bytes by kind, from every storage's creation to its free (a weakref finalizer), and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[int, str] = {}
        self.sizes: dict[int, int] = {}
        self.live: Counter[str] = Counter()
        self.total = 0
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.new_kind = TEMPORARIES  # what storages created now are (HOST while offloading copies them)

    def add(self, storage: torch.UntypedStorage, kind: str, nbytes: int | None = None) -> None:
        key = storage._cdata
        if key in self.kinds:
            return
        size = storage.nbytes() if nbytes is None else nbytes
        self.kinds[key], self.sizes[key] = kind, size
        weakref.finalize(storage, self._free, key)
        self.shift(kind, size)

    def _free(self, key: int) -> None:
        kind = self.kinds.pop(key, None)
        if kind is not None:
            self.shift(kind, -self.sizes.pop(key))

    def kind_of(self, tensor: torch.Tensor) -> str | None:
        return self.kinds.get(tensor.untyped_storage()._cdata)

    def reclassify(self, tensor: torch.Tensor, kind: str) -> None:
        """A temporary becomes `kind` (saved for backward, a gradient); weights and state keep theirs."""
        key = tensor.untyped_storage()._cdata
        if self.kinds.get(key) == TEMPORARIES:
            self.kinds[key] = kind
            self.shift(TEMPORARIES, -self.sizes[key])
            self.shift(kind, self.sizes[key])

    def shift(self, kind: str, nbytes: int) -> None:
        """Add `nbytes` (negative: remove) of `kind`; counts towards the peak unless the bytes are on the host."""
        self.live[kind] += nbytes
        if kind == HOST:
            return
        self.total += nbytes
        if self.total > self.peak:
            self.peak = self.total
            self.at_peak = {k: self.live[k] for k in DEVICE_KINDS}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.add(value.untyped_storage(), self.new_kind)
        return out


def fakeify(module: nn.Module, fake: FakeTensorMode) -> None:
    """Replace the module's meta parameters and buffers by fake CPU tensors of the same shapes and dtypes."""
    convert = fake.fake_tensor_converter
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = nn.Parameter(convert.from_meta_and_device(fake, param, torch.device("cpu")),
                                                     requires_grad=param.requires_grad)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = (convert.from_meta_and_device(fake, buffer, torch.device("cpu")) if buffer.is_meta
                                      else fake.from_tensor(buffer))


def to_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module` in `dtype` except the modules its class keeps in float32, as the pack's loaders leave them."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, param in module.named_parameters():
        param.data = param.data.to(torch.float32 if keep.intersection(name.split(".")) else dtype)
    return module


def write_models(family_key: str, root: Path) -> dict[str, str]:
    """The family's tiny published-format files (the loaders need them; full size swaps the modules)."""
    from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate
    from video_reward_lora.training.families.tiny_wan import write_wan22

    if family_key == "wan2.2":
        return {k: str(v) for k, v in write_wan22(root / "wan").items()}
    writer = write_cogvideox_fun if family_key == "cogvideox" else write_easyanimate
    return {"folder": str(writer(root / family_key))}


def write_pair(family, config, folder: Path) -> Path:
    """A preference dataset of one pair (winner, loser) with latents of the config's size."""
    from video_reward_lora.training.preference.dataset import DatasetInfo, NewClip, write_dataset
    from video_reward_lora.training.preference.pairs import ScoredPair

    generator = torch.Generator().manual_seed(0)
    shape = family.latent_shape(1, config.frames, config.height, config.width)[1:]
    clips = [NewClip(torch.rand(config.frames, 3, config.height, config.width, generator=generator), PROMPTS[0],
                     torch.randn(shape, generator=generator)) for _ in range(2)]
    info = DatasetInfo(family=config.family, frames=config.frames, height=config.height, width=config.width, fps=family.fps)
    write_dataset(folder, info, clips, [ScoredPair(0, 1, 1.0)])
    return folder


def build_trainer(family_key: str, method: str, full: bool, checkpointing: bool, steps: int, root: Path):
    """The method's engine on the family's tiny files (real tensors); `full`: at the seeds' settings, with the
    transformer(s), VAE and reward model swapped for the full-size architectures on the meta device (the engine
    injects its LoRA there)."""
    from video_reward_lora.reward.tiny import write_reward_models
    from video_reward_lora.training.build import load_family, load_objective
    from video_reward_lora.training.config import TrainConfig
    from video_reward_lora.training.methods.dpo import DiffusionDPO
    from video_reward_lora.training.methods.reward_backprop import RewardBackprop

    sizes = {**FULL[family_key], **FULL_RANK} if full else {**SMALL, "steps": steps}
    config = TrainConfig.from_dict(dict(
        family=family_key, model=write_models(family_key, root), rewards=[{"key": "hps_v2.1"}],
        reward_roots=[str(write_reward_models(root / "rewards", ("hps_v2.1",)))], prompts=PROMPTS,
        **{**sizes, "gradient_checkpointing": checkpointing}))
    dtype = torch.bfloat16 if full else torch.float32
    family = load_family(config, dtype, torch.device("cpu"))
    if method == "dpo":
        config = dataclasses.replace(config, method="dpo", dataset=str(write_pair(family, config, root / "pairs")))
    if full:
        full_size_text(family, family_key, ["", *PROMPTS], torch.Generator().manual_seed(0))
        with torch.device("meta"):
            for expert in family.transformers:
                setattr(family, "high" if expert == "high" else "transformer",
                        to_dtype(build_transformer(family_key, **OVERRIDES.get(family_key, {})), dtype))
            family.vae = to_dtype(build_vae(family_key), dtype)
    family.offload_idle = False  # the idle Wan expert's moves are modelled (`idle_expert`), not made
    if method == "dpo":
        return DiffusionDPO(config, family, config.preference_dataset())
    objective = load_objective(config, dtype, torch.device("cpu"))
    if full:
        from transformers import CLIPModel

        reward = objective.reward.terms[0].model
        with torch.device("meta"):
            reward.clip = to_dtype(CLIPModel(hps_v21_config()), dtype).requires_grad_(False).eval()
        reward.set_gradient_checkpointing(checkpointing)
    return RewardBackprop(config, family, objective)


def modules_of(trainer) -> dict[str, nn.Module]:
    """The step's modules by role: the trained transformer, the idle one (Wan2.2), the VAE, the reward model."""
    family = trainer.family
    modules = {"trained": trainer.transformer, "vae": family.vae}
    modules.update({"idle": m for name, m in family.transformers.items() if name != trainer.expert})
    if hasattr(trainer, "objective"):
        modules["reward"] = trainer.objective.reward.terms[0].model.clip
    return modules


def make_fake(trainer, fake: FakeTensorMode, full: bool) -> None:
    """Every module of the step on fake tensors; the engine's LoRA parameters and optimizer rebound to them (as the
    engine rebinds them after sharding), with the optimizer's CUDA default (foreach) and its state made."""
    for module in modules_of(trainer).values():
        if not full:
            module.to("meta")
        fakeify(module, fake)
    named = dict(trainer.transformer.named_parameters())
    trainer.params = {name: named[name] for name in trainer.params}
    trainer.optimizer = trainer._optimizer()
    for group in trainer.optimizer.param_groups:
        group["foreach"] = True
    for param in trainer.params.values():  # AdamW's state exists from the second step on
        param.grad = torch.zeros_like(param)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if hasattr(trainer, "objective"):
        for prompt in PROMPTS:
            trainer.objective.reward.terms[0].model.text_features(prompt)  # cached after the first step


@dataclasses.dataclass
class StepModel:
    """What one modelled step measured."""

    peak: int
    at_peak: dict[str, int]
    static: int  # device bytes before the step (weights, LoRA, AdamW state)
    flops: float
    floor: float
    transfer: int
    notes: list[str]


class Placement:
    """Where the frozen weights are under the options (on both Wan2.2 experts, as the engine applies them): fp8
    matrices at 1 byte (+ a 4-byte scale), swapped blocks on the host with two in flight, the idle Wan2.2 expert on
    the host except while it runs (the engine's `offload_idle`; with block swap its other blocks stay on the device),
    and the host<->device bytes this moves per step."""

    def __init__(self, memory: DeviceMemory, modules: dict[str, nn.Module], options: Options, family_key: str) -> None:
        self.memory, self.options = memory, options
        self.swapped: dict[str, int] = {}  # bytes of the swapped blocks by transformer role
        self.resident: dict[str, int] = {}  # device bytes of a transformer's frozen weights
        block_bytes, largest = 0, 0
        for role, module in modules.items():
            blocks = getattr(module, BLOCKS[family_key]) if role in ("trained", "idle") else None
            if blocks is not None and options.block_swap > len(blocks):
                raise ValueError(f"block swap of {options.block_swap} blocks; the transformer has {len(blocks)}")
            on_host = {id(p) for block in (blocks or [])[: options.block_swap] for p in block.parameters()}
            fp8 = ({id(m.weight) for m in (blocks or nn.ModuleList()).modules() if isinstance(m, nn.Linear)}
                   if options.fp8_base else set())
            resident = swapped = 0
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                if role == "trained" and tensor.requires_grad:
                    memory.add(tensor.untyped_storage(), LORA)
                    continue
                size = tensor.numel() + 4 if id(tensor) in fp8 else tensor.untyped_storage().nbytes()
                if id(tensor) in fp8:
                    largest = max(largest, tensor.numel() * 2)
                if id(tensor) in on_host:
                    swapped += size
                else:
                    resident += size
                kept = role != "idle" or options.block_swap  # a swapped idle expert's other blocks stay on the device
                memory.add(tensor.untyped_storage(), WEIGHTS if kept and id(tensor) not in on_host else HOST, size)
            if blocks is not None:
                self.swapped[role], self.resident[role] = swapped, resident
                block_bytes = max(block_bytes, swapped // max(1, options.block_swap))
        if options.block_swap:
            memory.shift(WEIGHTS, IN_FLIGHT * block_bytes)
        if options.fp8_base:
            memory.shift(TEMPORARIES, largest)  # one layer's upcast copy, counted throughout
        self.idle_moves = 0

    def idle_expert(self, module: nn.Module) -> None:
        """The idle expert joins the device while it runs (its non-swapped weights), and leaves after."""
        size = self.resident["idle"]

        def arrive(*_: Any) -> None:
            self.memory.shift(WEIGHTS, size)
            self.idle_moves += 1

        module.register_forward_pre_hook(arrive)
        module.register_forward_hook(lambda *_: self.memory.shift(WEIGHTS, -size))


@contextlib.contextmanager
def saved_tensors(memory: DeviceMemory, offload: bool, moved: list[int]) -> Iterator[None]:
    """Mark what autograd saves as activations; with `offload`, copy it to the host and back in the backward
    (`torch.autograd.graph.save_on_cpu` semantics, weights left where they are)."""

    def pack(tensor: torch.Tensor) -> tuple[bool, torch.Tensor]:
        if memory.kind_of(tensor) in (WEIGHTS, LORA, HOST) or not offload:
            memory.reclassify(tensor, ACTIVATIONS)
            return False, tensor
        memory.new_kind = HOST
        try:
            host = torch.empty_like(tensor).copy_(tensor)
        finally:
            memory.new_kind = TEMPORARIES
        moved[0] += tensor.untyped_storage().nbytes()
        return True, host

    def unpack(packed: tuple[bool, torch.Tensor]) -> torch.Tensor:
        offloaded, tensor = packed
        if offloaded:
            moved[0] += tensor.untyped_storage().nbytes()
            return tensor.clone()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


class Forwards:
    """The family's `predict` counted per transformer; after the first no-grad call of a transformer, the no-grad
    calls return an output of the measured shape without running (their FLOPs are the measured call's)."""

    def __init__(self, trainer, flops: FlopCounterMode) -> None:
        self.family, self.flops = trainer.family, flops
        self.original: Callable[..., torch.Tensor] = trainer.family.predict
        self.measured: dict[str, tuple[float, torch.Tensor]] = {}
        self.calls: Counter[str] = Counter()
        self.grad_calls: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        trainer.family.predict = self

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, *args: Any) -> torch.Tensor:
        name = self.family.expert(t)
        self.calls[name] += 1
        if torch.is_grad_enabled():
            self.grad_calls[name] += 1
            return self.original(latents, t, *args)
        if name in self.measured:
            self.skipped[name] += 1
            return torch.empty_like(self.measured[name][1])
        before = self.flops.get_total_flops()
        out = self.original(latents, t, *args)
        self.measured[name] = (self.flops.get_total_flops() - before, out)
        return out

    def forward_flops(self, name: str) -> float:
        return self.measured[name][0]


def forward_flops_of(obj: Any, attribute: str, flops: FlopCounterMode, into: list[float]) -> None:
    """Record the FLOPs of each call of `obj.attribute` (its forward) into `into`."""
    original = getattr(obj, attribute)

    def counted(*args: Any, **kwargs: Any) -> Any:
        before = flops.get_total_flops()
        out = original(*args, **kwargs)
        into.append(flops.get_total_flops() - before)
        return out

    setattr(obj, attribute, counted)


def model_step(trainer, options: Options, family_key: str) -> StepModel:
    """One training step of `trainer` (fake modules) under `options`: its device memory, FLOPs and floor."""
    from video_reward_lora.training.engine.engine import MicroBatch, step_generator

    c = trainer.config
    memory = DeviceMemory()
    flops = flop_counter()
    modules = modules_of(trainer)
    placement = Placement(memory, modules, options, family_key)
    for state in trainer.optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.ndim:
                memory.add(value.untyped_storage(), ADAM)
    if "idle" in modules and not options.block_swap:
        placement.idle_expert(modules["idle"])
    for param in trainer.params.values():
        param.register_post_accumulate_grad_hook(lambda p: memory.reclassify(p.grad, GRADS))
    static = memory.total
    forwards = Forwards(trainer, flops)
    decode_flops: list[float] = []
    reward_flops: list[float] = []
    forward_flops_of(trainer.family, "decode", flops, decode_flops)
    if hasattr(trainer, "objective"):
        forward_flops_of(trainer, "_rewards", flops, reward_flops)
    moved = [0]
    with flops, memory:
        trainer.optimizer.zero_grad(set_to_none=True)
        batch = MicroBatch(c.seed, 0, 0, 0, step_generator(c.seed, 0))
        with saved_tensors(memory, options.activation_offload, moved), trainer.autocast:
            loss, _ = trainer.loss(batch)
        trainer._backward(loss)
        trainer._clip(list(trainer.params.values()))
        trainer.optimizer.step()
    skipped = sum(forwards.skipped[name] * forwards.forward_flops(name) for name in forwards.skipped)
    total = flops.get_total_flops() + skipped
    forward = {name: forwards.forward_flops(name) for name in forwards.measured}
    floor = (sum(forwards.calls[name] * forward[name] for name in forwards.calls)
             + 2 * sum(forwards.grad_calls[name] * forward[name] for name in forwards.grad_calls)
             + 3 * sum(decode_flops) + 3 * sum(reward_flops))
    # a swapped block crosses once per forward and once more per backward (its recompute and gradient together)
    swap = sum(placement.swapped["trained" if name == trainer.expert else "idle"] * (count + forwards.grad_calls[name])
               for name, count in forwards.calls.items())
    idle = 2 * placement.resident.get("idle", 0) * min(1, placement.idle_moves)
    notes = [f"{sum(forwards.skipped.values())} no-grad transformer calls counted from the measured one",
             f"transfer {swap / GIB:.1f} GiB block swap + {idle / GIB:.1f} GiB idle expert + {moved[0] / GIB:.1f} GiB "
             "activation offload"]
    return StepModel(memory.peak, memory.at_peak, static, total, floor, swap + idle + moved[0], notes)


def run_model(family_key: str, method: str, options: Options, full: bool = True, steps: int = 10) -> StepModel:
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with tempfile.TemporaryDirectory() as root:
        trainer = build_trainer(family_key, method, full, options.checkpointing, steps, Path(root))
    make_fake(trainer, fake, full)
    return model_step(trainer, options, family_key)


def block_count(family_key: str) -> int:
    return {**TRANSFORMERS[family_key][1], **OVERRIDES.get(family_key, {})}["num_layers"]


def table_options(family_key: str) -> list[Options]:
    """The default options and the lowest-memory ones (fp8 base, every block but two swapped, activation offload);
    for Wan2.2 also the steps between."""
    swap = block_count(family_key) - IN_FLIGHT
    between = [Options(fp8_base=True), Options(fp8_base=True, block_swap=swap)] if family_key == "wan2.2" else []
    return [Options(), *between, Options(fp8_base=True, block_swap=swap, activation_offload=True)]


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:6.1f}"


def print_table(rows: list[tuple[str, str, Options, StepModel]]) -> None:
    print(f"{'family':<19} {'method':<15} {'options':<25} {'peak GiB':>8} {'weights':>7} {'LoRA+opt':>8} "
          f"{'activ.':>6} {'temp.':>6} {'TFLOPs':>7} {'floor':>7} {'ratio':>5} {'xfer GiB/step':>13}")
    for family_key, method, options, m in rows:
        lora = m.at_peak[LORA] + m.at_peak[GRADS] + m.at_peak[ADAM]
        print(f"{LABELS[family_key]:<19} {method:<15} {options.label():<25} {gib(m.peak):>8} {gib(m.at_peak[WEIGHTS]):>7} "
              f"{gib(lora):>8} {gib(m.at_peak[ACTIVATIONS]):>6} {gib(m.at_peak[TEMPORARIES]):>6} {m.flops / 1e12:7.0f} "
              f"{m.floor / 1e12:7.0f} {m.flops / m.floor:5.2f} {m.transfer / GIB:13.1f}")


def rss_kib(field: str) -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))


def measure_real(family_key: str, method: str, steps: int) -> dict[str, float]:
    """The peak RSS growth of one real training step (after a warm-up step) of the small configuration on the CPU."""
    with tempfile.TemporaryDirectory() as root:
        trainer = build_trainer(family_key, method, False, SMALL["gradient_checkpointing"], steps, Path(root))
        trainer.train_step()
    trainer.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    trainer.train_step()
    return {"growth": (rss_kib("VmHWM") - before) * 1024.0}


def validate(families: list[str], methods: list[str], steps: int) -> None:
    """The model's peak growth over the step's start against the measured RSS growth of the same real step."""
    print(f"CPU validation: the pack's tiny models at {SMALL['frames']} frames {SMALL['width']}x{SMALL['height']}, "
          f"{steps} steps, rank {SMALL['rank']}, fp32, no checkpointing; each real step in its own process "
          "(after a warm-up step; large blocks mmapped so freed memory leaves the RSS)")
    print(f"{'family':<19} {'method':<15} {'model MiB':>9} {'measured MiB':>12} {'measured/model':>14}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for family_key in families:
        for method in methods:
            model = run_model(family_key, method, Options(checkpointing=SMALL["gradient_checkpointing"]), False, steps)
            out = subprocess.run([sys.executable, __file__, "--child", family_key, method, "--steps", str(steps)],
                                 capture_output=True, text=True, check=True, env=env)
            measured = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
            predicted = model.peak - model.static
            print(f"{'tiny ' + family_key:<19} {method:<15} {predicted / 2**20:9.1f} {measured / 2**20:12.1f} "
                  f"{measured / predicted:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["cogvideox", "easyanimate", "wan2.2"])
    parser.add_argument("--method", nargs="+", default=["reward_backprop", "dpo"])
    parser.add_argument("--fp8-base", action="store_true", help="frozen transformer matrices in float8 e4m3fn + scale")
    parser.add_argument("--block-swap", type=int, default=0, help="transformer blocks kept on the host")
    parser.add_argument("--activation-offload", action="store_true", help="saved activations moved to the host")
    parser.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    parser.add_argument("--validate", action="store_true", help="compare with the measured RSS of small CPU steps")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of the small validation runs")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_real(*args.child, args.steps)))
        return
    if args.validate:
        validate(args.family, args.method, args.steps)
        return
    chosen = Options(args.fp8_base, args.block_swap, args.activation_offload, not args.no_checkpointing)
    print("One training step per row at the seeds' settings (bf16, rank 128, guidance 6, batch 1; reward backprop: "
          "gradient through the last step, first latent decoded, HPS v2.1-sized reward; DPO: one pair, policy with "
          "LoRA + reference without under no_grad), modelled on fake tensors. Peak = GPU bytes allocated, broken down "
          "at the peak (LoRA+opt = LoRA, its fp32 gradients and AdamW state). Floor = one forward per sampling step "
          "(guidance in the batch) + 2x forward for each backward through a grad step + 3x the decode's and reward's "
          "forwards. fp8, block swap and activation offload: modelled, not yet in the engine. Gradient checkpointing "
          "on unless the options say no-ckpt.")
    rows = []
    for family_key in args.family:
        options = table_options(family_key) if chosen == Options() else [chosen]
        for method in args.method:
            for option in options:
                started = time.perf_counter()
                result = run_model(family_key, method, option)
                rows.append((family_key, method, option, result))
                print(f"  {LABELS[family_key]}, {method}, {option.label()}: {time.perf_counter() - started:.0f} s; "
                      f"{'; '.join(result.notes)}", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
