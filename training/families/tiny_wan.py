"""Tiny, seeded Wan2.2 A14B files as ComfyUI users keep them, for the demo and the tests.

models/diffusion_models/: the two experts under the original Wan key names (fp16, or ComfyUI "fp8 scaled": float8
block weights with 0-dim float32 `scale_weight`s and `scale_input`s, as ComfyUI writes them, and a `scaled_fp8`
marker; the scales can also take the other shapes found in the wild, see SCALE_SHAPES); models/vae/: the Wan2.1 VAE under its
original key names; models/text_encoders/: ComfyUI's UMT5 file (transformers key names, the SentencePiece model
embedded as `spiece_model`). File names are Comfy-Org's (it publishes the Fun InP experts as fp8_scaled only; the
fp16 names follow its i2v/t2v ones). The experts keep the widths ComfyUI's Wan loader assumes
(head size 128, text width 4096, frequency width 256), so the expert and VAE files also load in ComfyUI.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from ..scaled_fp8 import MARKER, quantise_fp8, scale_key
from .tiny import T5_WORDS
from .wan import LATENT_CHANNELS

DIM, FFN_DIM, LAYERS, TEXT_DIM, FREQ_DIM = 128, 256, 2, 4096, 256
VAE_DIM = 8
FILE_DTYPE = torch.float16
FP8_FORMAT = torch.float8_e4m3fn
QUANTISED = ("self_attn.q.", "self_attn.k.", "self_attn.v.", "self_attn.o.", "cross_attn.q.", "cross_attn.k.",
             "cross_attn.v.", "cross_attn.o.", "ffn.0.", "ffn.2.", "SelfAttention.q.", "SelfAttention.k.",
             "SelfAttention.v.", "SelfAttention.o.", "DenseReluDense.wi_0.", "DenseReluDense.wi_1.", "DenseReluDense.wo.")
# the shapes a `scale_weight` takes, by a weight's number of rows: ComfyUI's 0-dim scalar, a one-element vector, and
# one scale per output row in the two layouts other quantisers write
SCALE_SHAPES = {"0-dim": lambda rows: (), "(1,)": lambda rows: (1,),
                "(out,1)": lambda rows: (rows, 1), "(out,)": lambda rows: (rows,)}


def expert_shapes(in_channels: int) -> dict[str, tuple[int, ...]]:
    """The original Wan key names and shapes of an expert (the layout of the official and ComfyUI checkpoints)."""
    shapes = {
        "patch_embedding.weight": (DIM, in_channels, 1, 2, 2), "patch_embedding.bias": (DIM,),
        "text_embedding.0.weight": (DIM, TEXT_DIM), "text_embedding.0.bias": (DIM,),
        "text_embedding.2.weight": (DIM, DIM), "text_embedding.2.bias": (DIM,),
        "time_embedding.0.weight": (DIM, FREQ_DIM), "time_embedding.0.bias": (DIM,),
        "time_embedding.2.weight": (DIM, DIM), "time_embedding.2.bias": (DIM,),
        "time_projection.1.weight": (6 * DIM, DIM), "time_projection.1.bias": (6 * DIM,),
        "head.modulation": (1, 2, DIM), "head.head.weight": (LATENT_CHANNELS * 4, DIM), "head.head.bias": (LATENT_CHANNELS * 4,),
    }
    for n in range(LAYERS):
        block = f"blocks.{n}."
        shapes[block + "modulation"] = (1, 6, DIM)
        for attention in ("self_attn", "cross_attn"):
            for projection in "qkvo":
                shapes[f"{block}{attention}.{projection}.weight"] = (DIM, DIM)
                shapes[f"{block}{attention}.{projection}.bias"] = (DIM,)
            shapes[f"{block}{attention}.norm_q.weight"] = (DIM,)
            shapes[f"{block}{attention}.norm_k.weight"] = (DIM,)
        shapes.update({block + "norm3.weight": (DIM,), block + "norm3.bias": (DIM,),
                       block + "ffn.0.weight": (FFN_DIM, DIM), block + "ffn.0.bias": (FFN_DIM,),
                       block + "ffn.2.weight": (DIM, FFN_DIM), block + "ffn.2.bias": (DIM,)})
    return shapes


def _expert(in_channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights at sensible scales: norm weights near 1, small biases, matrices by their fan-in."""
    state = {}
    for key, shape in expert_shapes(in_channels).items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith("modulation"):
            state[key] = noise * DIM**-0.5
        elif key.endswith(".bias"):
            state[key] = noise * 0.02
        elif len(shape) == 1:
            state[key] = 1 + 0.1 * noise
        else:
            state[key] = noise * math.prod(shape[1:]) ** -0.5
    return state


def _vae_original_names() -> list[str]:
    """Candidate original names of the Wan2.1 VAE (residual blocks with a possible shortcut, resamples with a possible
    time convolution); the converter tells which exist."""
    residual = ["residual.0.gamma", "residual.2.weight", "residual.2.bias", "residual.3.gamma", "residual.6.weight",
                "residual.6.bias", "shortcut.weight", "shortcut.bias"]
    attention = ["norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias"]
    resample = ["resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias"]
    names = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    for part, stage, residuals in (("encoder", "downsamples", 2), ("decoder", "upsamples", 3)):
        names += [f"{part}.{n}" for n in ("conv1.weight", "conv1.bias", "head.0.gamma", "head.2.weight", "head.2.bias")]
        names += [f"{part}.middle.{i}.{n}" for i in (0, 2) for n in residual] + [f"{part}.middle.1.{n}" for n in attention]
        index = 0
        for level in range(4):
            for _ in range(residuals):
                names += [f"{part}.{stage}.{index}.{n}" for n in residual]
                index += 1
            if level < 3:
                names += [f"{part}.{stage}.{index}.{n}" for n in resample]
                index += 1
    return names


def vae_module(seed: int = 0):
    """The tiny AutoencoderKLWan the VAE file holds."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKLWan(base_dim=VAE_DIM, z_dim=LATENT_CHANNELS)


def _vae(seed: int) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    weights = vae_module(seed).state_dict()
    original = {new: old for new, old in convert_wan_vae_to_diffusers({n: n for n in _vae_original_names()}).items() if new in weights}
    if original.keys() != weights.keys():
        raise RuntimeError(f"no original Wan VAE name for {sorted(weights.keys() - original.keys())[:4]}")
    return {original[key]: value.to(FILE_DTYPE) for key, value in weights.items()}


def spiece_model() -> bytes:
    """A small SentencePiece (unigram) model with UMT5's special ids: pad 0, eos 1, unk 2."""
    import sentencepiece

    lines = [" ".join(T5_WORDS[i:] + T5_WORDS[:i]) for i in range(len(T5_WORDS))]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=64, hard_vocab_limit=False, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def _text_encoder(seed: int) -> dict[str, torch.Tensor]:
    import sentencepiece
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = spiece_model()
    vocab = sentencepiece.SentencePieceProcessor(model_proto=tokenizer).get_piece_size()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                              feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    # ComfyUI's file holds the embedding once, as `shared`
    state = {k: v.to(FILE_DTYPE) for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return {**state, "spiece_model": torch.frombuffer(bytearray(tokenizer), dtype=torch.uint8)}


def scaled_fp8(state: dict[str, torch.Tensor], scales: str = "0-dim") -> dict[str, torch.Tensor]:
    """`state` as ComfyUI's "fp8 scaled" files store it: the matrices of the blocks in float8 (e4m3) with a float32
    `scale_weight` (of the SCALE_SHAPES form `scales`) and a 0-dim `scale_input` of 1 each, the other tensors as they
    are, and the `scaled_fp8` marker."""
    out = {MARKER: torch.empty(0, dtype=FP8_FORMAT)}
    for key, value in state.items():
        if key.endswith(".weight") and any(name in key for name in QUANTISED):
            like = torch.empty(SCALE_SHAPES[scales](value.shape[0]))
            out[key], out[scale_key(key)] = quantise_fp8(value.float(), FP8_FORMAT, like=like)
            out[key.removesuffix(".weight") + ".scale_input"] = torch.ones((), dtype=torch.float32)
        else:
            out[key] = value
    return out


def write_wan22(
    folder: Path, fun_inpaint: bool = True, fp8_scaled: bool = False, seed: int = 0, scales: str = "0-dim"
) -> dict[str, Path]:
    """Both experts (Fun InP: 36 input channels; else T2V: 16), the VAE and the text encoder under `folder` (a ComfyUI
    models folder; fp8 scaled with `scale_weight`s of the SCALE_SHAPES form `scales`); returns their paths by role:
    "high", "low", "vae", "text_encoder"."""
    from safetensors.torch import save_file

    kind, precision = "fun_inpaint" if fun_inpaint else "t2v", "fp8_scaled" if fp8_scaled else "fp16"
    paths = {
        "high": folder / "diffusion_models" / f"wan2.2_{kind}_high_noise_14B_{precision}.safetensors",
        "low": folder / "diffusion_models" / f"wan2.2_{kind}_low_noise_14B_{precision}.safetensors",
        "vae": folder / "vae" / "wan_2.1_vae.safetensors",
        "text_encoder": folder / "text_encoders" / f"umt5_xxl_{'fp8_e4m3fn_scaled' if fp8_scaled else 'fp16'}.safetensors",
    }
    generator = torch.Generator().manual_seed(seed)
    in_channels = 36 if fun_inpaint else LATENT_CHANNELS
    states = {
        "high": {k: v.to(FILE_DTYPE) for k, v in _expert(in_channels, generator).items()},
        "low": {k: v.to(FILE_DTYPE) for k, v in _expert(in_channels, generator).items()},
        "vae": _vae(seed),
        "text_encoder": _text_encoder(seed),
    }
    for role, state in states.items():
        if fp8_scaled and role != "vae":
            state = scaled_fp8(state, scales)
        paths[role].parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, paths[role])
    return paths
