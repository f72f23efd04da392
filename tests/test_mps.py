"""MPS: the safe pickle converter, loading, and the cross model against an independent computation."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import sys

import pytest
import torch

from video_reward_lora.reward.files import ModelFileError
from video_reward_lora.reward.mps import CrossModel, split_state
from video_reward_lora.reward.mps_convert import _restricted_pickle, convert_mps_checkpoint, is_pickled_module, module_weights
from video_reward_lora.reward.registry import load_reward


def test_converter_reads_the_pickle_without_its_classes(reward_root, tmp_path):
    assert not any(name.startswith("trainer") for name in sys.modules)
    source = reward_root / "MPS_overall_checkpoint.pth"
    assert is_pickled_module(source)
    target = convert_mps_checkpoint(source, tmp_path / "mps.safetensors")
    from safetensors import safe_open

    with safe_open(str(target), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == "mps"
    clip, cross = split_state({k: None for k in keys}, "x")
    assert "text_model.embeddings.token_embedding.weight" in clip
    assert "layers.1.1.fn.rotary_emb.inv_freq" in cross and "layers.0.0.fn.norm.bias" in cross
    assert not any(k.endswith("pos_emb") for k in keys)
    assert not any(name.startswith("trainer") for name in sys.modules)


def test_converted_file_gets_the_usual_mode(reward_root, tmp_path):
    previous = os.umask(0o022)
    try:
        target = convert_mps_checkpoint(reward_root / "MPS_overall_checkpoint.pth", tmp_path / "mps.safetensors")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o644


def test_read_only_models_folder_converts_in_memory(reward_root, tmp_path, monkeypatch, caplog, video):
    """The pickle is converted in memory (nothing written), with one note of where to run the converter."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    shutil.copyfile(reward_root / "MPS_overall_checkpoint.pth", folder / "MPS_overall_checkpoint.pth")
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode: make the write fail as a read-only mount does
        from video_reward_lora.reward import mps_convert

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(mps_convert, "write_safetensors_atomic", read_only)
    caplog.set_level(logging.WARNING)
    try:
        models = [load_reward("mps", [folder, reward_root]) for _ in range(2)]
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == ["MPS_overall_checkpoint.pth"]
    notes = [r.getMessage() for r in caplog.records if "converted in memory" in r.getMessage()]
    assert len(notes) == 1
    assert f"python -m video_reward_lora.reward.mps_convert {folder / 'MPS_overall_checkpoint.pth'}" in notes[0]
    assert "MPS_overall_checkpoint.safetensors" in notes[0]
    writable = load_reward("mps", [reward_root])
    expected = writable(video, "a red square moves right")
    assert all(torch.equal(model(video, "a red square moves right"), expected) for model in models)


def test_converter_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelFileError, match="does not hold a pickled torch module"):
        convert_mps_checkpoint(path, tmp_path / "evil.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


def test_converter_rejects_truncated_file(reward_root, tmp_path):
    data = (reward_root / "MPS_overall_checkpoint.pth").read_bytes()
    broken = tmp_path / "MPS_overall_checkpoint.pth"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        convert_mps_checkpoint(broken, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_mps_loads_scores_deterministically_with_gradients(reward_root, video):
    model = load_reward("mps", [reward_root])
    assert (reward_root / "MPS_overall_checkpoint.safetensors").exists()
    again = load_reward("mps", [reward_root])
    frames = video.clone().requires_grad_(True)
    scores = model(frames, "a red square moves right")
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    assert torch.equal(scores.detach(), again(video, "a red square moves right"))
    scores.sum().backward()
    assert frames.grad.abs().sum() > 0


def _ln(x, w):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w


def _reference_cross_model(state, image, text, mask, heads, dim_head):
    """The MPS cross model written out per head with explicit loops, from the published description."""
    x = image
    layers = 1 + max(int(k.split(".")[1]) for k in state)
    for i in range(layers):
        p = lambda name: state[f"layers.{i}.{name}"]  # noqa: E731
        # cross attention: each head of q attends to the single shared key/value head of the text
        xn = _ln(x, p("0.fn.norm.weight"))
        q = xn @ p("0.fn.to_q.weight").T
        kv = text @ p("0.fn.to_kv.weight").T
        k, v = kv[..., :dim_head], kv[..., dim_head:]
        outs = []
        for h in range(heads):
            qh = q[..., h * dim_head : (h + 1) * dim_head] / dim_head**0.5
            weights = torch.softmax(qh @ k.transpose(1, 2) + mask, dim=-1)
            outs.append(weights @ v)
        ff = xn @ p("0.fn.ff.0.weight").T
        half = ff.shape[-1] // 2
        ff = ff[..., :half] * (ff[..., half:] * torch.sigmoid(ff[..., half:]))
        x = x + torch.cat(outs, -1) @ p("0.fn.to_out.weight").T + ff @ p("0.fn.ff.2.weight").T
        # parallel block: rotary self-attention (multi-query) and SwiGLU from one fused projection
        xn = _ln(x, p("1.fn.norm.weight"))
        fused = xn @ p("1.fn.fused_attn_ff_proj.weight").T
        inner = heads * dim_head
        q, k, v, ff = fused.split((inner, dim_head, dim_head, fused.shape[-1] - inner - 2 * dim_head), -1)
        n = x.shape[1]
        inv = 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head))
        ang = torch.cat([torch.outer(torch.arange(n).float(), inv)] * 2, -1)

        def rot(t):
            a, b = t[..., : dim_head // 2], t[..., dim_head // 2 :]
            return t * ang.cos() + torch.cat([-b, a], -1) * ang.sin()

        k = rot(k)
        outs = []
        for h in range(heads):
            qh = rot(q[..., h * dim_head : (h + 1) * dim_head]) / dim_head**0.5
            outs.append(torch.softmax(qh @ k.transpose(1, 2), -1) @ v)
        half = ff.shape[-1] // 2
        ff = ff[..., :half] * (ff[..., half:] * torch.sigmoid(ff[..., half:]))
        x = x + torch.cat(outs, -1) @ p("1.fn.attn_out.weight").T + ff @ p("1.fn.ff_out.1.weight").T
    return x


def test_cross_model_matches_reference_formula():
    torch.manual_seed(0)
    model = CrossModel(dim=32, layers=2, heads=4, dim_head=8, ff_inner=48)
    for prm in model.parameters():
        prm.data.normal_(0, 0.2)
    state = model.state_dict()
    rebuilt = CrossModel.from_state(state)
    rebuilt.load_state_dict(state)
    image, text = torch.randn(2, 17, 32), torch.randn(2, 7, 32)
    mask = torch.zeros(2, 17, 7)
    mask[:, :, 3:] = float("-inf")
    ours = rebuilt(image, text, mask)
    reference = _reference_cross_model(state, image, text, mask, heads=4, dim_head=8)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)


def test_module_weights_skips_non_persistent_buffers(reward_root):
    path = reward_root / "MPS_overall_checkpoint.pth"
    root = torch.load(path, pickle_module=_restricted_pickle, weights_only=False)
    weights = module_weights(root, path.name)
    # transformers 5 keeps position_ids as a non-persistent buffer: absent from the state dict, so absent here
    assert not any(k.endswith("position_ids") for k in weights)
    assert weights["model.logit_scale"].dtype == torch.float16
    assert all(type(v) is torch.Tensor for v in weights.values())


def test_hps_loader_refuses_the_pickled_module(reward_root):
    with pytest.raises(ModelFileError, match="pickled Python objects"):
        load_reward("hps_v2.1", [reward_root], checkpoint="MPS_overall_checkpoint.pth")
