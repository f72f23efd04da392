"""HPS: the open_clip -> transformers mapping against an independent open_clip forward, loading and errors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from video_reward_lora.reward.clip_arch import load_tokenizer, tokenize
from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.reward.hps import unwrap_state_dict
from video_reward_lora.reward.registry import load_reward


def _open_clip_blocks(x, state, prefix, heads, mask=None):
    """open_clip's residual blocks (pre-LN, nn.MultiheadAttention with packed q/k/v, GELU MLP), sequence-first."""
    layers = 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))
    width = x.shape[-1]
    for i in range(layers):
        p = lambda n: state[f"{prefix}{i}.{n}"]  # noqa: E731
        h = F.layer_norm(x, (width,), p("ln_1.weight"), p("ln_1.bias"))
        h = h.transpose(0, 1)
        attn, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, p("attn.in_proj_weight"), p("attn.in_proj_bias"), None, None, False, 0.0,
            p("attn.out_proj.weight"), p("attn.out_proj.bias"), training=False, need_weights=False, attn_mask=mask,
        )
        x = x + attn.transpose(0, 1)
        h = F.layer_norm(x, (width,), p("ln_2.weight"), p("ln_2.bias"))
        x = x + F.linear(F.gelu(F.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias"))), p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
    return x


def open_clip_image(state, pixels):
    conv = state["visual.conv1.weight"]
    width = conv.shape[0]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, width)
    x = torch.cat([cls, x], 1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (width,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = _open_clip_blocks(x, state, "visual.transformer.resblocks.", heads=width // 80)
    pooled = F.layer_norm(x[:, 0], (width,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return pooled @ state["visual.proj"]


def open_clip_text(state, ids):
    width = state["token_embedding.weight"].shape[1]
    x = state["token_embedding.weight"][ids] + state["positional_embedding"]
    n = ids.shape[1]
    causal = torch.full((n, n), float("-inf")).triu_(1)
    x = _open_clip_blocks(x, state, "transformer.resblocks.", heads=width // 64, mask=causal)
    x = F.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ state["text_projection"]


def test_mapping_reproduces_open_clip_formula(reward_root):
    raw = torch.load(reward_root / "HPS_v2.1_compressed.pt", weights_only=True)
    assert set(raw) == {"state_dict"} and next(iter(raw["state_dict"].values())).dtype == torch.float16
    state = {k: v.float() for k, v in unwrap_state_dict(raw, "hps").items()}
    model = load_reward("hps_v2.1", [reward_root])
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 224, 224)
    tokenizer = load_tokenizer(reward_root / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    ids = tokenize(tokenizer, "the cat and the dog", torch.device("cpu"))

    ref_image = F.normalize(open_clip_image(state, pixels), dim=-1)
    ref_text = F.normalize(open_clip_text(state, ids), dim=-1)
    with torch.no_grad():
        ours = model.score_pixels(pixels, model.encode_text("the cat and the dog"))
    reference = ref_image @ ref_text[0]
    assert torch.allclose(ours, reference, atol=2e-5), (ours, reference)
    # padding after the end token does not matter: open_clip pads with 0, the HF tokenizer with the end token
    zero_padded = ids.clone()
    zero_padded[0, int(ids[0].argmax()) + 1 :] = 0
    assert torch.allclose(open_clip_text(state, zero_padded), open_clip_text(state, ids), atol=1e-5)


def test_scores_are_deterministic_and_differentiable(reward_root, video):
    first = load_reward("hps_v2.1", [reward_root])
    second = load_reward("hps_v2.1", [reward_root])
    frames = video.clone().requires_grad_(True)
    scores = first(frames, "a red square")
    assert torch.equal(scores.detach(), second(video, "a red square"))
    assert scores.shape == (6,) and scores.dtype == torch.float32
    scores.mean().backward()
    assert frames.grad.abs().sum() > 0 and torch.isfinite(frames.grad).all()


def test_micro_batches_and_checkpointing_do_not_change_scores_or_gradients(reward_root, video):
    model = load_reward("hps_v2.1", [reward_root])
    grads = []
    for micro_batch, checkpointing in ((8, False), (2, False), (2, True)):
        model.micro_batch = micro_batch
        model.set_gradient_checkpointing(checkpointing)
        frames = video.clone().requires_grad_(True)
        model(frames, "a red square").sum().backward()
        grads.append(frames.grad)
    assert model.clip.vision_model.training
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[0], grads[2], atol=1e-6)


def test_missing_file_names_file_folder_and_source(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_reward("hps_v2.1", [tmp_path])
    message = str(err.value)
    assert "HPS_v2.1_compressed.pt" in message and str(tmp_path) in message and "huggingface.co/xswu/HPSv2" in message


def test_wrong_kinds_of_file_say_so(reward_root):
    with pytest.raises(ModelFileError, match="is a folder"):
        load_reward("hps_v2.1", [reward_root], checkpoint="PickScore_v1")
    with pytest.raises(ModelFileError, match="aesthetic-predictor head"):
        load_reward("hps_v2.1", [reward_root], checkpoint="aesthetic_predictor_v2_5.pth")


def test_truncated_checkpoint(reward_root, tmp_path):
    data = (reward_root / "HPS_v2.1_compressed.pt").read_bytes()
    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_reward("hps_v2.1", [tmp_path, reward_root])


def test_paths_outside_the_folder_are_refused(reward_root):
    with pytest.raises(ModelFileError, match="outside the reward_models folder"):
        load_reward("hps_v2.1", [reward_root], checkpoint="../../etc/passwd")
    with pytest.raises(ModelFileError, match="relative to the reward_models folder"):
        load_reward("hps_v2.1", [reward_root], checkpoint="/etc/passwd")
