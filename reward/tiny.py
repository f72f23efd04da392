"""Tiny, seeded reward models written in the exact official file formats, for the demo and the tests.

They are built at run time (no binaries in the repository) and go through the same loaders as the real files.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .registry import REWARDS

SOT, EOT = "<|startoftext|>", "<|endoftext|>"

# The Kinetics-400 class names in their usual alphabetical order (the dataset's class list; as the id2label of
# MCG-NJU/videomae-base-finetuned-kinetics, the order is assumed, not checked: the loader reads a folder's own labels).
KINETICS_400 = tuple(label.strip() for label in """
abseiling; air drumming; answering questions; applauding; applying cream; archery; arm wrestling; arranging flowers;
assembling computer; auctioning; baby waking up; baking cookies; balloon blowing; bandaging; barbequing; bartending;
beatboxing; bee keeping; belly dancing; bench pressing; bending back; bending metal; biking through snow;
blasting sand; blowing glass; blowing leaves; blowing nose; blowing out candles; bobsledding; bookbinding;
bouncing on trampoline; bowling; braiding hair; breading or breadcrumbing; breakdancing; brush painting;
brushing hair; brushing teeth; building cabinet; building shed; bungee jumping; busking; canoeing or kayaking;
capoeira; carrying baby; cartwheeling; carving pumpkin; catching fish; catching or throwing baseball;
catching or throwing frisbee; catching or throwing softball; celebrating; changing oil; changing wheel;
checking tires; cheerleading; chopping wood; clapping; clay pottery making; clean and jerk; cleaning floor;
cleaning gutters; cleaning pool; cleaning shoes; cleaning toilet; cleaning windows; climbing a rope;
climbing ladder; climbing tree; contact juggling; cooking chicken; cooking egg; cooking on campfire;
cooking sausages; counting money; country line dancing; cracking neck; crawling baby; crossing river; crying;
curling hair; cutting nails; cutting pineapple; cutting watermelon; dancing ballet; dancing charleston;
dancing gangnam style; dancing macarena; deadlifting; decorating the christmas tree; digging; dining; disc golfing;
diving cliff; dodgeball; doing aerobics; doing laundry; doing nails; drawing; dribbling basketball; drinking;
drinking beer; drinking shots; driving car; driving tractor; drop kicking; drumming fingers; dunking basketball;
dying hair; eating burger; eating cake; eating carrots; eating chips; eating doughnuts; eating hotdog;
eating ice cream; eating spaghetti; eating watermelon; egg hunting; exercising arm;
exercising with an exercise ball; extinguishing fire; faceplanting; feeding birds; feeding fish; feeding goats;
filling eyebrows; finger snapping; fixing hair; flipping pancake; flying kite; folding clothes; folding napkins;
folding paper; front raises; frying vegetables; garbage collecting; gargling; getting a haircut; getting a tattoo;
giving or receiving award; golf chipping; golf driving; golf putting; grinding meat; grooming dog; grooming horse;
gymnastics tumbling; hammer throw; headbanging; headbutting; high jump; high kick; hitting baseball; hockey stop;
holding snake; hopscotch; hoverboarding; hugging; hula hooping; hurdling; hurling (sport); ice climbing;
ice fishing; ice skating; ironing; javelin throw; jetskiing; jogging; juggling balls; juggling fire;
juggling soccer ball; jumping into pool; jumpstyle dancing; kicking field goal; kicking soccer ball; kissing;
kitesurfing; knitting; krumping; laughing; laying bricks; long jump; lunge; making a cake; making a sandwich;
making bed; making jewelry; making pizza; making snowman; making sushi; making tea; marching; massaging back;
massaging feet; massaging legs; massaging person's head; milking cow; mopping floor; motorcycling; moving furniture;
mowing lawn; news anchoring; opening bottle; opening present; paragliding; parasailing; parkour;
passing American football (in game); passing American football (not in game); peeling apples; peeling potatoes;
petting animal (not cat); petting cat; picking fruit; planting trees; plastering; playing accordion;
playing badminton; playing bagpipes; playing basketball; playing bass guitar; playing cards; playing cello;
playing chess; playing clarinet; playing controller; playing cricket; playing cymbals; playing didgeridoo;
playing drums; playing flute; playing guitar; playing harmonica; playing harp; playing ice hockey; playing keyboard;
playing kickball; playing monopoly; playing organ; playing paintball; playing piano; playing poker;
playing recorder; playing saxophone; playing squash or racquetball; playing tennis; playing trombone;
playing trumpet; playing ukulele; playing violin; playing volleyball; playing xylophone; pole vault;
presenting weather forecast; pull ups; pumping fist; pumping gas; punching bag; punching person (boxing); push up;
pushing car; pushing cart; pushing wheelchair; reading book; reading newspaper; recording music; riding a bike;
riding camel; riding elephant; riding mechanical bull; riding mountain bike; riding mule;
riding or walking with horse; riding scooter; riding unicycle; ripping paper; robot dancing; rock climbing;
rock scissors paper; roller skating; running on treadmill; sailing; salsa dancing; sanding floor; scrambling eggs;
scuba diving; setting table; shaking hands; shaking head; sharpening knives; sharpening pencil; shaving head;
shaving legs; shearing sheep; shining shoes; shooting basketball; shooting goal (soccer); shot put; shoveling snow;
shredding paper; shuffling cards; side kick; sign language interpreting; singing; situp; skateboarding; ski jumping;
skiing (not slalom or crosscountry); skiing crosscountry; skiing slalom; skipping rope; skydiving; slacklining;
slapping; sled dog racing; smoking; smoking hookah; snatch weight lifting; sneezing; sniffing; snorkeling;
snowboarding; snowkiting; snowmobiling; somersaulting; spinning poi; spray painting; spraying; springboard diving;
squat; sticking tongue out; stomping grapes; stretching arm; stretching leg; strumming guitar; surfing crowd;
surfing water; sweeping floor; swimming backstroke; swimming breast stroke; swimming butterfly stroke;
swing dancing; swinging legs; swinging on something; sword fighting; tai chi; taking a shower; tango dancing;
tap dancing; tapping guitar; tapping pen; tasting beer; tasting food; testifying; texting; throwing axe;
throwing ball; throwing discus; tickling; tobogganing; tossing coin; tossing salad; training dog; trapezing;
trimming or shaving beard; trimming trees; triple jump; tying bow tie; tying knot (not on a tie); tying tie;
unboxing; unloading truck; using computer; using remote controller (not gaming); using segway; vault;
waiting in line; walking the dog; washing dishes; washing feet; washing hair; washing hands; water skiing;
water sliding; watering plants; waxing back; waxing chest; waxing eyebrows; waxing legs; weaving basket; welding;
whistling; windsurfing; wrapping present; wrestling; writing; yawning; yoga; zumba
""".split(";"))


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


def write_videomae_folder(folder: Path, seed: int = 0) -> None:
    """A Hugging Face VideoMAEForVideoClassification folder labelled with the Kinetics-400 classes, as
    MCG-NJU/videomae-base-finetuned-kinetics: its geometry (224 px, patches of 16, 16 frames in tubelets of 2, mean
    pooling) on a tiny encoder, with a classifier strong enough that the class probabilities differ. The weights keep
    the upstream names (`q_bias`, `v_bias`: transformers 5 writes them back so), and config.json the upstream
    `qkv_bias` (transformers 5 writes `qv_bias`; it reads both)."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    config = VideoMAEConfig(
        image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, qkv_bias=True, use_mean_pooling=True, norm_pix_loss=False,
        id2label=dict(enumerate(KINETICS_400)), label2id={label: i for i, label in enumerate(KINETICS_400)},
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VideoMAEForVideoClassification(config)
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, 0.5)
    _save_hf(model, folder)
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    saved["qkv_bias"] = saved.pop("qv_bias")
    config_file.write_text(json.dumps(saved, indent=2))


# Qwen2-VL's chat format for user messages of videos, images and text, its default system message included
QWEN2_VL_CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def qwen2_tokenizer(extra_special: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer of the Qwen2 class with Qwen2-VL's special tokens (and `extra_special`) and its
    chat template: Qwen2-VL's tokenizer in kind, with a few merges instead of its 151k-token vocabulary."""
    from transformers import Qwen2Tokenizer

    merges = [("Ġ", "t"), ("h", "e"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("Ġt", "he"), ("Ġ", "o")]
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN2_VL_SPECIAL_TOKENS)})
    if extra_special:  # as VideoAlign adds its reward tokens: a second call, after the base tokenizer's own
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def _peft_wrapped(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """A state dict as PEFT names it with LoRA (adapter 'default', random rank-`rank` pairs) on the language model's
    linear layers: `base_model.model.` + `<layer>.base_layer.*`, `<layer>.lora_A/B.default.weight`."""
    wrapped = {}
    for key, value in state.items():
        module, _, kind = key.rpartition(".")
        if key.startswith("model.layers.") and module.endswith(LORA_TARGETS):
            wrapped[f"{module}.base_layer.{kind}"] = value
            if kind == "weight":
                wrapped[f"{module}.lora_A.default.weight"] = torch.randn(rank, value.shape[1]) / math.sqrt(value.shape[1])
                wrapped[f"{module}.lora_B.default.weight"] = 0.05 * torch.randn(value.shape[0], rank)
        else:
            wrapped[key] = value
    return {"base_model.model." + k: v for k, v in wrapped.items()}


def write_video_reward_folder(folder: Path, seed: int = 0, step: int = 11352) -> None:
    """A VideoReward folder as published (model_config.json; checkpoint-<step>/model.pth, the LoRA-wrapped model's
    state dict in bf16 under transformers 4.45's Qwen2-VL names with the reward head `rm_head.weight`; and
    checkpoint-<step>/tokenizer/ with the reward tokens) on a tiny Qwen2-VL, whose config.json the folder also holds
    (the official folder has none: its base is Qwen2-VL-2B-Instruct). Frames are capped at 56x56 pixels to stay small."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from .video_reward import DIMENSIONS, REWARD_TOKENS

    tokenizer = qwen2_tokenizer(REWARD_TOKENS)
    ids = dict(zip(QWEN2_VL_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN2_VL_SPECIAL_TOKENS))))
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
        old_names = {
            k.replace("model.visual.", "visual.", 1).replace("model.language_model.", "model.", 1): v
            for k, v in model.state_dict().items()
        }
        state = _peft_wrapped(old_names, rank=4)
        state["base_model.model.rm_head.weight"] = torch.randn(1, 32) / math.sqrt(32)
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    torch.save(OrderedDict((k, v.to(torch.bfloat16)) for k, v in state.items()), checkpoint / "model.pth")
    tokenizer.save_pretrained(str(checkpoint / "tokenizer"))
    config.save_pretrained(str(folder))
    settings = {
        "data_config": {
            "meta_data": "/path/to/dataset/meta_data.csv", "data_dir": "/path/to/dataset", "meta_data_test": None,
            "max_frame_pixels": 56 * 56, "num_frames": None, "fps": 2.0, "p_shuffle_frames": 0.0, "p_color_jitter": 0.0,
            "eval_dim": list(DIMENSIONS), "prompt_template_type": "detailed_special", "add_noise": False,
            "sample_type": "uniform", "use_tied_data": True,
        },
        "training_args": {"output_dir": "rm_output", "bf16": True, "save_full_model": True},
        "model_config": {
            "model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "model_revision": "main", "output_dim": 1,
            "use_special_tokens": True, "torch_dtype": "bfloat16", "reward_token": "special", "loss_type": "btt",
        },
        "peft_lora_config": {
            "lora_enable": True, "vision_lora": False, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
            "lora_target_modules": None, "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"],
            "lora_modules_to_save": None, "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1,
        },
        "inference_config": {
            "VQ_mean": 3.6757, "VQ_std": 2.2476, "MQ_mean": 1.1646, "MQ_std": 1.3811, "TA_mean": 2.8105, "TA_std": 2.5121,
        },
    }
    (folder / "model_config.json").write_text(json.dumps(settings, indent=4))


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
        elif key == "action":
            write_videomae_folder(target, seed + offset)
        elif key == "videoreward":
            write_video_reward_folder(target, seed + offset)
        else:
            raise ValueError(f"no tiny writer for '{key}'")
    return root
