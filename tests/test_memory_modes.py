"""Memory modes (training.families.memory) on the CPU as execution device: the same seeded latents and frames in
every mode, the mode really in place while sampling, the weights back as they were afterwards, clear errors."""
from __future__ import annotations

import pytest
from random_lora import linear_shapes, random_lora
import torch

from video_reward_lora.training.families.cogvideox import CogVideoXFun
from video_reward_lora.training.families.easyanimate import EasyAnimate
from video_reward_lora.training.families.memory import MEMORY_MODES, apply_memory_mode, components
from video_reward_lora.training.families.tiny import write_cogvideox_fun, write_easyanimate, write_easyanimate_v51
from video_reward_lora.training.lora import adapters
from video_reward_lora.training.lora.formats import Lora
from video_reward_lora.training.sampler import sample

WRITERS = {
    "cog-2b": (CogVideoXFun, lambda p: write_cogvideox_fun(p / "CogVideoX-Fun-V1.1-2b-InP")),
    "easyanimate": (EasyAnimate, lambda p: write_easyanimate(p / "EasyAnimateV5-7b-zh-InP")),
    "easyanimate-v5.1": (EasyAnimate, lambda p: write_easyanimate_v51(p / "EasyAnimateV5.1-7b-zh-InP")),
}
# (mode, components it is applied to: None = all); the last is how the sampler node streams the big ones
PLACEMENTS = [(mode, None) for mode in MEMORY_MODES] + [("sequential offload", ("transformer", "vae"))]


@pytest.fixture(scope="module", params=list(WRITERS))
def model(request, tmp_path_factory):
    family_cls, write = WRITERS[request.param]
    return family_cls, write(tmp_path_factory.mktemp(request.param))


def _lora(family) -> Lora:
    shapes = linear_shapes(family.transformer, family.lora_family)
    return random_lora(family.lora_family, shapes, torch.Generator().manual_seed(5), down_scale=0.3, up_scale=0.3)


def _hooked(module: torch.nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def test_memory_modes_give_the_same_video(model):
    """Image-to-video with a LoRA attached first (as the node does), then sampled and decoded in each placement."""
    family_cls, folder = model
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    results, seen = {}, {}
    for mode, names in PLACEMENTS:
        family = family_cls.load(folder, dtype=torch.float32)
        states = []
        hook = family.transformer.register_forward_pre_hook(
            lambda module, _: states.append((next(module.parameters()).device.type, _hooked(module))))
        with adapters.attached(family.transformer, family.lora_family, [(_lora(family), 0.8)]):
            before = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in components(family).items()}
            with apply_memory_mode(family, mode, "cpu", names=names) as placement:
                assert list(placement.modules) == list(names or components(family))
                encoders_hooked = [_hooked(encoder) for encoder in family.text_encoders.values()]
                latents = sample(family, ["a red ball"], steps=3, guidance=6.0, generator=torch.Generator().manual_seed(0),
                                 start_image=image, frames=9, height=32, width=32)
                frames = family.decode(latents, first_n=1)
            assert not any(_hooked(module) for module in components(family).values())
            for name, module in components(family).items():  # the weights (LoRA included) back on the CPU, unchanged
                assert all(p.device.type == "cpu" for p in module.parameters())
                after = module.state_dict()
                assert after.keys() == before[name].keys() and all(torch.equal(after[k], v) for k, v in before[name].items())
        hook.remove()
        results[(mode, names)] = (latents, frames)
        seen[(mode, names)] = (set(states), encoders_hooked)
    assert seen[("full", None)] == ({("cpu", False)}, [False] * len(family.text_encoders))
    assert seen[("model offload", None)] == ({("cpu", True)}, [True] * len(family.text_encoders))
    assert seen[("sequential offload", None)] == ({("meta", True)}, [True] * len(family.text_encoders))  # streamed
    assert seen[("sequential offload", ("transformer", "vae"))] == ({("meta", True)}, [False] * len(family.text_encoders))
    full_latents, full_frames = results[("full", None)]
    assert full_latents.shape == family.latent_shape(1, 9, 32, 32)
    for latents, frames in results.values():
        assert torch.equal(latents, full_latents) and torch.equal(frames, full_frames)


def test_bad_memory_modes_and_components(model):
    family_cls, folder = model
    family = family_cls.load(folder, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown memory mode 'offload'; expected one of: 'full', 'model offload', 'sequential offload'"):
        apply_memory_mode(family, "offload", "cpu")
    with pytest.raises(ValueError, match=f"{family.name} has no component unet; it has text_encoder:"):
        apply_memory_mode(family, "full", "cpu", names=["unet", "vae"])
    assert not any(_hooked(module) for module in components(family).values())
