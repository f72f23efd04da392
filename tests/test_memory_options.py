"""The memory options on tiny Wan2.2: activation offload and block swap (every block swapped) leave the losses and LoRA
gradients bit-identical; fp8 base weights keep the frozen Linear weights in float8, train within a measured tolerance
of the full-precision base and export the same LoRA file layout; bad settings fail before training."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file
from torch import nn

from test_training import tiny_config
from video_reward_lora.reward.tiny import write_reward_models
from video_reward_lora.training.engine import engine
from video_reward_lora.training.engine.fp8 import Fp8Linear, check_lora_bases
from video_reward_lora.training.families.tiny_wan import LAYERS, write_wan22
from video_reward_lora.training.lora.adapters import attached
from video_reward_lora.training.lora.formats import read_lora
from video_reward_lora.training.methods.reward_backprop import RewardBackprop

# One step with fp8 (e4m3: 3 mantissa bits) base weights on both Wan2.2 experts against one with the bf16 base, both
# computing in bf16 (measured on CPU: the losses equal, the LoRA gradients 0.213 apart in relative L2, where the bf16
# base itself is 0.099 from the float32 base; 0.156 with the trained expert alone in fp8)
FP8_LOSS_REL, FP8_GRAD_REL = 1e-2, 0.25
FP8_OVER_BF16 = 2.5  # the most the fp8 base's gradient error may be, in units of the bf16 base's own from float32


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"wan2.2": write_wan22(root / "wan"), "rewards": write_reward_models(root / "reward_models", ("aesthetic_v2.5",))}


def _trainer(models: dict[str, Path], dtype: torch.dtype = torch.float32, **overrides) -> RewardBackprop:
    config = tiny_config(models, "wan2.2", validation_prompts=[], **overrides)
    return RewardBackprop.from_config(config, dtype, torch.device("cpu"))


def _step(trainer: RewardBackprop) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step's loss and the LoRA gradients it gave."""
    loss = trainer.train_step()["loss"]
    return loss, {name: p.grad.clone() for name, p in trainer.params.items()}


def test_activation_offload_gives_identical_gradients(models, monkeypatch):
    packed = []
    original = torch.autograd.graph.save_on_cpu

    class Counted(original):
        def __init__(self, pin_memory: bool = False) -> None:
            super().__init__(pin_memory)
            pack = self.pack_hook
            self.pack_hook = lambda tensor: packed.append(tensor.shape) or pack(tensor)

    base_loss, base_grads = _step(_trainer(models))
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Counted)
    loss, grads = _step(_trainer(models, activation_offload=True))
    assert len(packed) > 100  # the saved activations of the step went through the CPU hooks
    assert loss == base_loss and all(torch.equal(grads[name], grad) for name, grad in base_grads.items())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_swapping_every_block_gives_identical_losses_and_gradients(models, checkpointing):
    base_loss, base_grads = _step(_trainer(models, gradient_checkpointing=checkpointing))
    trainer = _trainer(models, gradient_checkpointing=checkpointing, block_swap=LAYERS)
    swap = trainer.swap
    assert len(swap.blocks) == LAYERS and not any(t.requires_grad for tensors in swap.tensors for t in tensors)
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    forwards = []
    trainer.transformer.register_forward_pre_hook(lambda *_: forwards.append(torch.is_grad_enabled()))
    loss, grads = _step(trainer)
    assert loss == base_loss and all(torch.equal(grads[name], grad) for name, grad in base_grads.items())
    # every forward fetches each block once and moves it out after it; the backward fetches each again, and the
    # first block stays (it is the next one the next forward runs)
    runs = len(forwards)
    assert runs > 1 and forwards.count(True) == 1
    assert swap.fetched == {0: runs + 1, 1: runs + 1} and swap.evicted == {0: runs, 1: runs + 1}
    assert list(swap.resident) == [0] and swap.most_resident == 2
    # the optimizer holds the LoRA parameters of the swapped blocks themselves, and they stayed put
    lora = [p for block in swap.blocks for name, p in block.named_parameters() if "lora_" in name]
    assert lora and all(any(p is q for q in optimised) for p in lora) and all(p.grad is not None for p in lora)
    # the idle expert, which the sampler runs for the other noise levels, is swapped the same way
    (idle,) = trainer.idle_swaps.values()
    assert len(idle.blocks) == LAYERS and set(idle.fetched) == {0, 1} and idle.fetched == idle.evicted
    assert not idle.resident and idle.most_resident == 2


def test_block_swap_and_fp8_settings_are_checked(models, monkeypatch):
    with pytest.raises(ValueError, match="block_swap 3: the WanTransformer3DModel has 2 blocks"):
        _trainer(models, block_swap=LAYERS + 1)
    with pytest.raises(ValueError, match="block_swap must be 0 or more"):
        tiny_config(models, "wan2.2", block_swap=-1)
    for option in ({"block_swap": 1}, {"fp8_base": True}):
        with pytest.raises(ValueError, match=f"{next(iter(option))} does not work on FSDP"):
            tiny_config(models, "wan2.2", fsdp=True, **option)
    monkeypatch.setattr(engine.zero, "in_use", lambda accelerator: True)
    with pytest.raises(ValueError, match="block_swap does not work under DeepSpeed"):
        _trainer(models, block_swap=1)
    convolution = nn.Sequential(nn.Conv2d(2, 2, 1))
    inject_adapter_in_model(LoraConfig(r=1, target_modules=["0"]), convolution)
    with pytest.raises(ValueError, match="the LoRA targets 0, a Conv2d; fp8 base weights cover Linear layers only"):
        check_lora_bases(convolution)


def _relative(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The relative L2 distance of all the LoRA gradients from the reference ones."""
    flat = {key: torch.cat([g[name].float().flatten() for name in reference]) for key, g in (("g", grads), ("r", reference))}
    return float((flat["g"] - flat["r"]).norm() / flat["r"].norm())


def test_fp8_base_weights_train_near_the_bf16_base_and_export_the_same_lora(models, tmp_path):
    _, full_grads = _step(_trainer(models))
    base = _trainer(models, torch.bfloat16)
    base_loss, base_grads = _step(base)
    trainer = _trainer(models, torch.bfloat16, fp8_base=True)
    linears = {name: m for name, m in trainer.transformer.named_modules() if isinstance(m, nn.Linear)
               and not m.weight.requires_grad}
    fp8 = {name for name, m in linears.items() if isinstance(m, Fp8Linear)}
    assert fp8 == {name for name in linears if "time_embedder" not in name}  # the float32-kept embedder stays
    assert any(".base_layer" in name for name in fp8) and any("ffn" in name for name in fp8)
    assert all(linears[name].weight.dtype == torch.float8_e4m3fn and linears[name].weight_scale.dtype == torch.float32
               for name in fp8)
    (other,) = (m for name, m in trainer.family.transformers.items() if name != trainer.expert)  # the idle expert
    idle = {name: type(m) for name, m in other.named_modules() if isinstance(m, nn.Linear)}
    assert {name for name, kind in idle.items() if kind is not Fp8Linear} == {name for name in idle if "time_embedder" in name}
    loss, grads = _step(trainer)
    assert abs(loss - base_loss) <= FP8_LOSS_REL * abs(base_loss)
    error = _relative(grads, base_grads)
    assert 0 < error <= FP8_GRAD_REL and error <= FP8_OVER_BF16 * _relative(base_grads, full_grads)
    written = {name: load_file(t.write_lora(tmp_path / f"{name}.safetensors")) for name, t in (("base", base), ("fp8", trainer))}
    assert {k: (v.shape, v.dtype) for k, v in written["fp8"].items()} == {k: (v.shape, v.dtype) for k, v in written["base"].items()}
    family = base.family  # the pack's loader attaches it to the expert without a LoRA
    with attached(family.transformers["high"], family.lora_family, [(read_lora(tmp_path / "fp8.safetensors"), 1.0)]) as matched:
        assert matched == len(trainer.params) // 2


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set")
def test_a_lora_trained_on_fp8_base_weights_loads_through_comfyuis_own_loader(models, tmp_path):
    """ComfyUI's LoraLoaderModelOnly on the tiny native Wan expert patches one weight per module of the LoRA."""
    from test_comfyui import _comfyui_script

    trainer = _trainer(models, torch.bfloat16, fp8_base=True, expert="high")
    trainer.train_step()
    lora = trainer.write_lora(tmp_path / "loras" / "fp8_trained.safetensors")
    result = _comfyui_script("lora_on_native_wan.py", models["wan2.2"]["high"], lora)
    assert result["lora_modules"] == len(trainer.params) // 2 == result["patched_weights"], result


def test_fp8_and_block_swap_quantise_or_swap_before_the_transformer_reaches_the_device(models):
    """With fp8_base or block_swap the transformer loads on the CPU and only its fp8 form (or its kept blocks) moves to
    the device; the VAE and text encoder go there at once. The `meta` device stands in for a GPU (moving there drops
    the data, which is all this checks)."""
    from video_reward_lora.training.build import load_family
    from video_reward_lora.training.families.tiny import write_cogvideox_fun

    folder = write_cogvideox_fun(models["rewards"].parent / "cog")
    config = tiny_config({**models, "cogvideox": folder}, "cogvideox", validation_prompts=[], fp8_base=True)
    family = load_family(config, torch.bfloat16, torch.device("meta"))
    assert {p.device.type for p in family.transformer.parameters()} == {"cpu"}
    assert {p.device.type for p in family.vae.parameters()} == {"meta"} and family.device.type == "meta"
    plain = load_family(tiny_config({**models, "cogvideox": folder}, "cogvideox", validation_prompts=[]), torch.bfloat16,
                        torch.device("meta"))
    assert {p.device.type for p in plain.transformer.parameters()} == {"meta"}


@pytest.mark.parametrize("offload_idle", [True, False])
def test_with_fp8_the_idle_wan_expert_is_quantised_and_placed(models, offload_idle):
    """Sampling runs Wan2.2's idle expert too, so fp8_base quantises it on the CPU; it then goes to the device at once,
    or, with the idle offload, when it runs. `meta` stands in for a GPU (float32: no autocast on meta)."""
    from video_reward_lora.training.build import load_family, load_objective

    config = tiny_config(models, "wan2.2", validation_prompts=[], fp8_base=True, offload_idle_expert=offload_idle)
    family = load_family(config, torch.float32, torch.device("meta"))
    trainer = RewardBackprop(config, family, load_objective(config, torch.float32, torch.device("cpu")))
    (idle_name,) = (name for name in family.transformers if name != trainer.expert)
    idle = family.transformers[idle_name]
    assert {p.device.type for p in trainer.transformer.parameters()} == {"meta"}
    assert {p.device.type for p in idle.parameters()} == {"cpu" if offload_idle else "meta"}
    assert any(isinstance(m, Fp8Linear) for m in idle.modules())
