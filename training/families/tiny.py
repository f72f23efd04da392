"""Tiny, seeded video models written in the published folder layouts, for the demo and the tests.

They are built at run time with the same classes and file names as the real models (no binaries in the
repository) and load through the same loaders.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

T5_WORDS = "a the red ball field video cat dog of in on rolling across sunny at dusk blue sky".split()


def write_t5_tokenizer(folder: Path, max_length: int = 226) -> int:
    """A small SentencePiece-style (Unigram) T5 tokenizer folder; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{word}", -1.0) for word in T5_WORDS] + [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.decoder = decoders.Metaspace()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({**special, "model_max_length": max_length, "tokenizer_class": "T5Tokenizer"}))
    return len(vocab)


def write_cogvideox_fun(folder: Path, rotary: bool = False, seed: int = 0) -> Path:
    """A CogVideoX-Fun V1.1 InP folder (2B style: sin-cos positions; `rotary=True`: 5B style, 3D RoPE)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel, DDIMScheduler
    from transformers import T5Config, T5EncoderModel

    vocab = write_t5_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16, num_layers=2,
            text_embed_dim=32, time_embed_dim=16, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            use_rotary_positional_embeddings=rotary,
        )
        vae = AutoencoderKLCogVideoX(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16)
        text_encoder = T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                               pad_token_id=0, eos_token_id=1))
    transformer.save_pretrained(folder / "transformer")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config["add_noise_in_inpaint_model"] = True  # as in the published V1.1 configs (a VideoX-Fun pipeline flag)
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                              steps_offset=0, timestep_spacing="trailing")
    scheduler.save_config(folder / "scheduler")
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler_config.update({"_class_name": "CogVideoXDDIMScheduler", "snr_shift_scale": 3.0})
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    return folder


def write_bert_tokenizer(folder: Path) -> int:
    """A small WordPiece (Bert) tokenizer folder; returns its vocabulary size."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *T5_WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    return len(vocab)


def write_easyanimate(folder: Path, seed: int = 0) -> Path:
    """An EasyAnimate V5 zh-InP folder: transformer under the original weight names (text stream in attn2), with
    the upstream-only config keys the published config.json carries."""
    from diffusers import AutoencoderKLMagvit, DDIMScheduler, EasyAnimateTransformer3DModel
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, T5Config, T5EncoderModel

    from .easyanimate import RENAMES

    bert_vocab = write_bert_tokenizer(folder / "tokenizer")
    t5_vocab = write_t5_tokenizer(folder / "tokenizer_2", max_length=256)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = EasyAnimateTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16, patch_size=2, num_layers=2,
            mmdit_layers=2, text_embed_dim=24, text_embed_dim_t5=32, time_embed_dim=16, time_position_encoding_type="3d_rope",
            after_norm=False, resize_inpaint_mask_directly=True, enable_text_attention_mask=False, add_noise_in_inpaint_model=True,
        )
        vae = AutoencoderKLMagvit(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16)
        bert = BertModel(BertConfig(vocab_size=bert_vocab, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=48, max_position_embeddings=80))
        t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                     pad_token_id=0, eos_token_id=1))
    state = {}
    for key, value in transformer.state_dict().items():
        for original, diffusers_name in RENAMES.items():
            key = key.replace(diffusers_name, original)
        state[key] = value.contiguous()
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "transformer" / "diffusion_pytorch_model.safetensors")
    config = {"_class_name": "EasyAnimateTransformer3DModel", **{k: v for k, v in transformer.config.items() if not k.startswith("_")},
              "clip_channels": None, "ref_channels": None, "enable_clip_in_inpaint": False}
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    vae.save_pretrained(folder / "vae")
    bert.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False, steps_offset=1).save_config(folder / "scheduler")
    return folder
