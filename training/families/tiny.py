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


QWEN2_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2's chat format: a default system turn, then `<|im_start|>{role}\n{text}<|im_end|>\n` per message, text parts of
# list contents joined, and the assistant header as the generation prompt
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_qwen2_tokenizer(folder: Path) -> int:
    """A small byte-level BPE (Qwen2) tokenizer folder with Qwen2's special tokens and chat format; returns its
    vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for word in T5_WORDS:  # " word" (Ġ is the byte-level space) as one token, merged left to right
        piece = "Ġ"
        for char in word:
            if piece + char not in vocab:
                merges.append((piece, char))
                vocab[piece + char] = len(vocab)
            piece += char
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN2_SPECIAL])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "eos_token": "<|im_end|>", "bos_token": None, "unk_token": None, "chat_template": QWEN2_CHAT_TEMPLATE,
    }, indent=2))
    return tokenizer.get_vocab_size()


def write_easyanimate_weights(folder: Path, transformer: torch.nn.Module) -> None:
    """The weights of a diffusers EasyAnimate transformer into `folder`/transformer under the original names (text
    stream in attn2), as the published folders keep them."""
    from safetensors.torch import save_file

    from .easyanimate import RENAMES

    state = {}
    for key, value in transformer.state_dict().items():
        for original, diffusers_name in RENAMES.items():
            key = key.replace(diffusers_name, original)
        state[key] = value.detach().contiguous()
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "transformer" / "diffusion_pytorch_model.safetensors")


def _write_easyanimate_transformer_and_vae(folder: Path, seed: int, **text_stream) -> None:
    """The transformer under the original weight names (text stream in attn2), with the upstream-only config keys
    the published config.json carries, and the Magvit VAE."""
    from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = EasyAnimateTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16, patch_size=2, num_layers=2,
            mmdit_layers=2, time_embed_dim=16, time_position_encoding_type="3d_rope", after_norm=False,
            resize_inpaint_mask_directly=True, add_noise_in_inpaint_model=True, **text_stream,
        )
        vae = AutoencoderKLMagvit(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16)
    write_easyanimate_weights(folder, transformer)
    config = {"_class_name": "EasyAnimateTransformer3DModel", **{k: v for k, v in transformer.config.items() if not k.startswith("_")},
              "clip_channels": None, "ref_channels": None, "enable_clip_in_inpaint": False}
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    vae.save_pretrained(folder / "vae")


def write_easyanimate(folder: Path, seed: int = 0) -> Path:
    """An EasyAnimate V5 zh-InP folder: Bert and T5 text encoders, DDIM scheduler."""
    from diffusers import DDIMScheduler
    from transformers import BertConfig, BertModel, T5Config, T5EncoderModel

    bert_vocab = write_bert_tokenizer(folder / "tokenizer")
    t5_vocab = write_t5_tokenizer(folder / "tokenizer_2", max_length=256)
    _write_easyanimate_transformer_and_vae(folder, seed, text_embed_dim=24, text_embed_dim_t5=32, enable_text_attention_mask=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        bert = BertModel(BertConfig(vocab_size=bert_vocab, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=48, max_position_embeddings=80))
        t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                     pad_token_id=0, eos_token_id=1))
    bert.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False, steps_offset=1).save_config(folder / "scheduler")
    return folder


def write_easyanimate_v51(folder: Path, seed: int = 0) -> Path:
    """An EasyAnimate V5.1 zh-InP folder: one Qwen2-VL text encoder (weights as transformers saves them, with the
    flat config.json of the published Qwen2-VL folders), a normed text projection, a dynamically shifting
    flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vocab = write_qwen2_tokenizer(folder / "tokenizer")
    hidden = 32
    _write_easyanimate_transformer_and_vae(folder, seed, add_norm_text_encoder=True, text_embed_dim=hidden,
                                           text_embed_dim_t5=None, enable_text_attention_mask=True)
    config = {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
        "use_sliding_window": False, "sliding_window": 512, "max_window_layers": 2, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "bos_token_id": vocab - 3, "eos_token_id": vocab - 1, "torch_dtype": "float32",
        "vision_config": {"depth": 1, "embed_dim": 16, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3, "hidden_size": hidden,
                          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        qwen = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
    qwen.save_pretrained(folder / "text_encoder")
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config, indent=2))
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15).save_config(folder / "scheduler")
    return folder
