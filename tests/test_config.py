"""TrainConfig.validate refuses every setting that cannot work, naming it and what it allows, before anything loads."""
from __future__ import annotations

import pytest

from video_reward_lora.training.config import TrainConfig
from video_reward_lora.training.families import family_class
from video_reward_lora.training.families.cogvideox import CogVideoXFun
from video_reward_lora.training.families.wan import Wan22

BASE = dict(family="cogvideox", model={"folder": "x"}, prompts=["a red ball"])

REFUSED = [
    (dict(loss="negativ"), r"loss 'negativ' is not one of negative, target"),
    (dict(frame_mode="al"), r"frame_mode 'al' is not one of all, first, evenly, random"),
    (dict(frame_count=0), r"frame_count must be positive, got 0"),
    (dict(loss_target=0.5), r"loss_target applies to loss 'target' only"),
    (dict(strategy="random", random_start=10, random_end=10), r"random_start 10 and random_end 10 must give a non-empty range"),
    (dict(random_end=60), r"random_end 60 .* inside the 50 sampling steps"),
    (dict(random_start=-1), r"random_start must be 0 or more, got -1"),
    (dict(strategy="list", step_list=[3, 50]), r"step_list \[50\] lies outside the sampling steps 0..49"),
    (dict(strategy="list"), r"strategy 'list' needs a step_list"),
    (dict(width=100), r"width and height must be positive multiples of 16, got 100x256"),
    (dict(height=0), r"width and height must be positive multiples of 16, got 256x0"),
    (dict(frames=50), r"frames must be 4k\+1 \(e.g. 49\), got 50"),
    (dict(family="wan2.2", model=dict.fromkeys(("high", "low", "vae", "text_encoder"), "x"), frames=80), r"Wan2.2: frames must be 4k\+1"),
    (dict(rewards=["hps_v2_1"]), r"rewards: unknown reward 'hps_v2_1'; choose one of hps_v2.1, hps_v2, pickscore"),
    (dict(rewards=[{"key": "pickscore", "weight": float("inf")}]), r"rewards: the weight of pickscore must be a finite number"),
    (dict(guidance=0.5), r"guidance must be at least 1 \(1 = no classifier-free guidance\), got 0.5"),
    (dict(max_grad_norm=0), r"max_grad_norm must be positive, got 0"),
    (dict(weight_decay=-0.1), r"weight_decay must be 0 or more, got -0.1"),
    (dict(validation_every=0), r"validation_every must be positive, got 0"),
    (dict(sample_every=0), r"sample_every must be positive, got 0"),
    (dict(adam_eps=0), r"adam_eps must be positive, got 0"),
    (dict(device="gpu"), r"device 'gpu' is not one of auto, cpu, cuda, cuda:<index>"),
    (dict(frames="49"), r"frames must be a whole number, got '49'"),
    (dict(learning_rate=float("nan")), r"learning_rate must be a finite number, got nan"),
    (dict(gradient_checkpointing="yes"), r"gradient_checkpointing must be true or false, got 'yes'"),
    (dict(prompts=["a cat", "  "]), r"prompts: prompt 2 is empty"),
    (dict(validation_prompts=[""]), r"validation_prompts: prompt 1 is empty"),
]


@pytest.mark.parametrize("change, message", REFUSED, ids=[next(iter(c)) + "-" + str(i) for i, (c, _) in enumerate(REFUSED)])
def test_each_setting_is_refused_with_its_name(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**BASE, **change})


def test_the_settings_that_can_work_pass():
    config = TrainConfig.from_dict({**BASE, "loss": "target", "loss_target": 0.3, "frame_mode": "evenly", "frame_count": 4,
                                    "strategy": "random", "random_start": 40, "random_end": 50, "step_list": [0, 49],
                                    "device": "cuda:1", "width": 672, "height": 384, "frames": 1, "guidance": 1})
    assert (config.width, config.frames, config.loss_target) == (672, 1, 0.3)


def test_size_checks_need_no_model():
    """The families' size rules are class methods: the config checks them without loading anything."""
    assert family_class("cogvideox") is CogVideoXFun and family_class("wan2.2") is Wan22
    Wan22.check_size(81, 480, 832)
    with pytest.raises(ValueError, match="Wan2.2: width and height must be positive multiples of 16, got 840x480"):
        Wan22.check_size(81, 480, 840)
    with pytest.raises(ValueError, match="CogVideoX-Fun: frames must be 4k\\+1"):
        CogVideoXFun.check_size(48, 256, 256)
