"""Tiny, seeded reward models written in the exact official file formats, for the demo and the tests.

They are built at run time (no binaries in the repository) and go through the same loaders as the real files.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import torch

from .registry import REWARDS

SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    codes = [*printable, *(256 + n for n, _ in enumerate(extra))]
    return [chr(c) for c in codes]


def write_clip_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer folder (vocab.json, merges.txt, configs) with a byte-level vocabulary; returns its size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n</w>"]
    tokens += [m.replace(" ", "") for m in merges] + [SOT, EOT]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(tokens)


def _block(prefix: str, width: int, state: dict[str, torch.Tensor]) -> None:
    state[f"{prefix}ln_1.weight"] = 1 + 0.1 * torch.randn(width)
    state[f"{prefix}ln_1.bias"] = 0.1 * torch.randn(width)
    state[f"{prefix}attn.in_proj_weight"] = torch.randn(3 * width, width) / math.sqrt(width)
    state[f"{prefix}attn.in_proj_bias"] = 0.02 * torch.randn(3 * width)
    state[f"{prefix}attn.out_proj.weight"] = torch.randn(width, width) / math.sqrt(width)
    state[f"{prefix}attn.out_proj.bias"] = 0.02 * torch.randn(width)
    state[f"{prefix}ln_2.weight"] = 1 + 0.1 * torch.randn(width)
    state[f"{prefix}ln_2.bias"] = 0.1 * torch.randn(width)
    state[f"{prefix}mlp.c_fc.weight"] = torch.randn(4 * width, width) / math.sqrt(width)
    state[f"{prefix}mlp.c_fc.bias"] = 0.02 * torch.randn(4 * width)
    state[f"{prefix}mlp.c_proj.weight"] = torch.randn(width, 4 * width) / math.sqrt(4 * width)
    state[f"{prefix}mlp.c_proj.bias"] = 0.02 * torch.randn(width)


def open_clip_state(
    vocab_size: int,
    vision_width: int = 160,
    vision_layers: int = 2,
    text_width: int = 128,
    text_layers: int = 2,
    embed_dim: int = 64,
    image_size: int = 224,
    patch: int = 14,
    context: int = 77,
) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's ViT key names and shapes (ViT-H-14 is 1280/32, 1024/24, 1024, 224, 14)."""
    grid = image_size // patch
    state: dict[str, torch.Tensor] = {
        "positional_embedding": 0.01 * torch.randn(context, text_width),
        "text_projection": torch.randn(text_width, embed_dim) / math.sqrt(text_width),
        "logit_scale": torch.tensor(math.log(100.0)),
        "visual.class_embedding": 0.1 * torch.randn(vision_width),
        "visual.positional_embedding": 0.1 * torch.randn(grid * grid + 1, vision_width),
        "visual.proj": torch.randn(vision_width, embed_dim) / math.sqrt(vision_width),
        "visual.conv1.weight": torch.randn(vision_width, 3, patch, patch) / math.sqrt(3 * patch * patch),
        "visual.ln_pre.weight": 1 + 0.1 * torch.randn(vision_width),
        "visual.ln_pre.bias": 0.1 * torch.randn(vision_width),
        "visual.ln_post.weight": 1 + 0.1 * torch.randn(vision_width),
        "visual.ln_post.bias": 0.1 * torch.randn(vision_width),
    }
    for i in range(vision_layers):
        _block(f"visual.transformer.resblocks.{i}.", vision_width, state)
    for i in range(text_layers):
        _block(f"transformer.resblocks.{i}.", text_width, state)
    state["token_embedding.weight"] = 0.1 * torch.randn(vocab_size, text_width)
    state["ln_final.weight"] = 1 + 0.1 * torch.randn(text_width)
    state["ln_final.bias"] = 0.1 * torch.randn(text_width)
    return state


def write_hps(path: Path, vocab_size: int, seed: int = 0) -> None:
    """An HPS checkpoint as published: `{'state_dict': <open_clip keys>}` in fp16, saved with torch.save."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = open_clip_state(vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.half() for k, v in state.items()}}, path)


def tiny_clip_config(vocab_size: int, projection_dim: int = 64, image_size: int = 224, act: str = "gelu"):
    """A small CLIP with ViT-H-14's head widths (80 vision, 64 text), so shape-derived configs agree with it."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=77, hidden_act=act,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
            projection_dim=projection_dim,
        ),
        vision_config=dict(
            hidden_size=160, intermediate_size=320, num_attention_heads=2, num_hidden_layers=2,
            image_size=image_size, patch_size=14, hidden_act=act, projection_dim=projection_dim,
        ),
        projection_dim=projection_dim,
    )


def _save_hf(model: torch.nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)


def write_clip_folder(folder: Path, vocab_size: int, seed: int = 0, projection_dim: int = 64, act: str = "gelu") -> None:
    """A Hugging Face CLIP model folder (config.json + model.safetensors), as PickScore_v1 or clip-vit-large-patch14."""
    from transformers import CLIPModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(vocab_size, projection_dim, act=act))
        with torch.no_grad():
            model.logit_scale.fill_(math.log(100.0))
    _save_hf(model, folder)


def write_siglip_folder(folder: Path, seed: int = 0) -> None:
    """A Hugging Face SigLIP folder (text and vision towers), as google/siglip-so400m-patch14-384."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=dict(
            vocab_size=128, hidden_size=48, intermediate_size=96, num_attention_heads=2, num_hidden_layers=1,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=48, intermediate_size=96, num_attention_heads=2, num_hidden_layers=2,
            image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
        ),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SiglipModel(config)
    _save_hf(model, folder)


def write_aesthetic_head(path: Path, embed_dim: int, version: str, seed: int = 0) -> None:
    """An aesthetic head as published: a plain state dict, `layers.*` in fp32 (v2) or `scoring_head.*` in bf16 (v2.5)."""
    from .aesthetic import V2_HEAD, V25_HEAD, build_head

    spec, prefix, dtype = (V2_HEAD, "layers.", torch.float32) if version == "v2" else (V25_HEAD, "scoring_head.", torch.bfloat16)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = build_head(embed_dim, *spec)
        with torch.no_grad():
            head[-1].bias.fill_(5.5)
    state = OrderedDict((prefix + k, v.to(dtype)) for k, v in head.state_dict().items())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def write_reward_models(root: Path, keys: tuple[str, ...] = ("hps_v2.1",), seed: int = 0) -> Path:
    """Tiny versions of the named rewards under their official names in `root` (a models/reward_models folder)."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = root / REWARDS["pickscore"].encoder
    vocab = write_clip_tokenizer(tokenizer_dir)
    for offset, key in enumerate(keys):
        spec = REWARDS[key]
        target = root / spec.checkpoint if spec.checkpoint else root
        if spec.checkpoint is None and spec.encoder is None:  # flicker, dynamism: no files
            continue
        if key == "subject_consistency":
            write_siglip_folder(root / spec.encoder, seed + offset)
        elif key in ("hps_v2", "hps_v2.1"):
            write_hps(target, vocab, seed + offset)
        elif key == "pickscore":
            write_clip_folder(target, vocab, seed + offset)
        elif key == "aesthetic_v2":
            write_clip_folder(root / spec.encoder, vocab, seed + offset, projection_dim=32, act="quick_gelu")
            write_aesthetic_head(target, 32, "v2", seed + offset)
        elif key == "aesthetic_v2.5":
            write_siglip_folder(root / spec.encoder, seed + offset)
            write_aesthetic_head(target, 48, "v2.5", seed + offset)
        else:
            raise ValueError(f"no tiny writer for '{key}'")
    return root
