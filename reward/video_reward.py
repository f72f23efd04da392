"""VideoReward (VideoAlign, KwaiVGI): a Qwen2-VL-2B video preference model that scores a clip's visual quality (VQ),
motion quality (MQ) and text alignment (TA); the reward is their sum, Overall.

Facts from the upstream code (github.com/KwaiVGI/VideoAlign, the files named) and the model card
(huggingface.co/KwaiVGI/VideoReward, now KlingTeam/VideoReward, `base_model: Qwen/Qwen2-VL-2B-Instruct`):

- Folder (checkpoints/README.md; utils.py `load_model_from_checkpoint`; trainer.py `_save`): `model_config.json` and
  `checkpoint-<step>/` (the official one is checkpoint-11352), of which upstream loads the highest step. It holds
  `model.pth`, a torch.save'd state dict of the whole model (trainer `_save` with `save_full_model`), and
  `tokenizer/`, the base tokenizer with the three reward tokens added (`tokenizer.save_pretrained`). There is no
  config.json: upstream builds the model from `model_config.model_name_or_path` (Qwen/Qwen2-VL-2B-Instruct,
  train_reward.py `create_model_and_processor`), so its architecture is built in here (`QWEN2_VL_2B`, the values of
  that model's config.json); a `config.json` put in the folder takes its place.
- model_config.json (train_reward.py `save_configs_to_json`, inference.py `load_configs_from_json`): `data_config`
  (data.py `DataConfig`: fps, num_frames, max_frame_pixels, eval_dim, prompt_template_type, sample_type),
  `model_config` (utils.py `ModelConfig`: output_dim, use_special_tokens, reward_token), `peft_lora_config` (utils.py
  `PEFTLoraConfig`: lora_enable, lora_r, lora_alpha, use_rslora), `training_args` (unused) and `inference_config`
  (VQ_mean, VQ_std, MQ_mean, MQ_std, TA_mean, TA_std). All are read from the file; the official one's, as third-party
  loaders check them, are fps 2.0, max_frame_pixels 448*448, eval_dim [VQ, MQ, TA], "detailed_special", "uniform";
  output_dim 1, special tokens, reward_token "special"; LoRA r 64, alpha 128 on every linear layer but lm_head,
  rm_head, embed_tokens and visual; means/stds 3.6757/2.2476 (VQ), 1.1646/1.3811 (MQ), 2.8105/2.5121 (TA).
- Model (trainer.py `Qwen2VLRewardModelBT`): Qwen2VLForConditionalGeneration plus `rm_head = Linear(hidden_size,
  output_dim, bias=False)` on the language model's last hidden state (after its final norm). The video's merged patch
  embeddings replace the `<|video_pad|>` token embeddings (`masked_scatter`), and the language model is then called
  with `position_ids=None`, which in transformers (4.45.2 upstream, and today) means plain 1D positions 0..L-1 for
  all three M-RoPE sections, not Qwen2-VL's 3D video positions; this follows that. With `reward_token "special"`,
  `<|VQ_reward|>`, `<|MQ_reward|>`, `<|TA_reward|>` (added as additional special tokens, ids 151657..151659 in the
  official tokenizer as third-party loaders check it; embeddings resized to len(tokenizer)) each occur once in the prompt; the head's outputs at
  them, in sequence order, are VQ, MQ, TA (with output_dim 3, the diagonal: dimension i from token i). Attention is
  causal and the caption comes after the VQ and MQ tokens, so only TA depends on the prompt.
- Weights (inference.py `VideoVLMRewardInference`): `model.pth` is the PEFT-wrapped model's state dict, keys
  `base_model.model.` + transformers 4.45's names (`visual.*`, `model.*`, `lm_head.weight`, `rm_head.weight`), LoRA
  layers as `<module>.base_layer.*`, `.lora_A.default.weight`, `.lora_B.default.weight`. Here the LoRA is merged,
  W + (alpha / r) B A (what PEFT computes unmerged, in eval mode), and the names mapped to today's layout.
- Scores (inference.py `reward`, `_norm`): with `use_norm` (the default) each dimension is standardised,
  (x - X_mean) / X_std from `inference_config` (none when it is absent), and Overall = VQ + MQ + TA. The reward
  returns Overall; VQ, MQ, TA and Overall are in `last_sub_scores`.
- Frames (vision_process.py `smart_nframes`, `_read_video_decord`, with sample_type "uniform"): n = frames /
  source_fps * fps, clamped to [4, min(768, frames) rounded down to even], rounded to even, at most the frame count
  (with data_config.num_frames set instead: that, rounded to even); indices linspace(0, frames - 1, n).round(). A
  clip given as tensors has no frame rate: `source_fps` (16, Wan's) stands in for the video file's.
- Size (vision_process.py `smart_resize`, `fetch_video`): height and width rounded to multiples of 28, scaled down
  to at most max_frame_pixels when over it, else up to at least 128*28*28 pixels; then a bicubic, antialiased resize
  (torchvision on the uint8 frames, which rounds and clamps to 0..255). Here the resize is the same interpolation on
  the 0..1 frames, clamped to 0..1 but not rounded to 1/255 (so that gradients pass).
- Pixels (Qwen2-VL's image processor, as transformers 4.45 applies it to videos, with `do_rescale`): /255, then the
  OpenAI CLIP mean and std; frames grouped by the temporal patch (2; an odd count repeats the last frame, as newer
  processors do), cut into 14-pixel patches ordered by 2x2 merge window, giving `pixel_values_videos`
  [t*h*w, 3*2*14*14] and `video_grid_thw` (t, h, w) = (frames/2, height/14, width/14).
- Text (inference.py `prepare_batch`, prompt_template.py `build_prompt`): one user message, the video then the
  "detailed_special" prompt with the caption, through the tokenizer's chat template with the generation prompt;
  `<|video_pad|>` repeated t*h*w/4 times, as the processor does.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClipReward, model_output, set_hf_checkpointing
from .composite import select_frames
from .files import ModelFileError, read_weights
from .hf_load import load_strict

DIMENSIONS = ("VQ", "MQ", "TA")
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
VIDEO_TOKEN = "<|video_pad|>"
BASE_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
MODEL_CONFIG = "model_config.json"
WEIGHTS = "model.pth"
PEFT_PREFIX = "base_model.model."
FRAME_FACTOR = 2
FPS_MIN_FRAMES, FPS_MAX_FRAMES = 4, 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
MAX_ASPECT_RATIO = 200
DEFAULT_SOURCE_FPS = 16.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Qwen/Qwen2-VL-2B-Instruct's config.json (the architecture; the vocabulary is resized to the tokenizer's length)
QWEN2_VL_2B: dict[str, Any] = {
    "model_type": "qwen2_vl", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936, "tie_word_embeddings": True, "attention_dropout": 0.0, "use_sliding_window": False,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "vision_config": {
        "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "hidden_act": "quick_gelu", "mlp_ratio": 4, "num_heads": 16,
        "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
}
# prompt_template.py's DETAILED_PROMPT_WITH_SPECIAL_TOKEN (VideoAlign, MIT licence): the model's input format, verbatim
# (trailing spaces included)
PROMPT_TEMPLATE = "\n".join((
    "",
    "You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.",
    "",
    "**Visual Quality:**  ",
    "Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:",
    "- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.",
    "- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.",
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).",
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.",
    "- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. ",
    "",
    "Please provide the ratings of Visual Quality: <|VQ_reward|>",
    "END",
    "",
    "**Motion Quality:**  ",
    "Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:",
    "- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).",
    "- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).",
    "- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.",
    "- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.",
    "- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.",
    "- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.",
    "",
    "Please provide the ratings of Motion Quality: <|MQ_reward|>",
    "END",
    "",
    "**Text Alignment:**  ",
    "Assess how well the video matches the textual prompt across the following sub-dimensions:",
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.",
    "- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.",
    "- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  ",
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.",
    "- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.",
    "",
    "Textual prompt - {text_prompt}",
    "Please provide the ratings of Text Alignment: <|TA_reward|>",
    "END",
    "",
))


@dataclass(frozen=True)
class VideoRewardSettings:
    """What model_config.json says about sampling, the head, the LoRA and the normalisation."""

    fps: float
    num_frames: int | None
    max_pixels: int
    output_dim: int
    lora_scale: float | None  # alpha / r; None: the weights are not PEFT-wrapped
    norm: dict[str, tuple[float, float]] | None  # dimension -> (mean, std); None: raw scores
    base_model: str


def _section(config: dict[str, Any], name: str, path: Path, label: str) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, dict):
        raise ModelFileError(f"{label}: {path} has no '{name}' section (is this the VideoReward folder?)")
    return section


def _require(value: Any, expected: Any, key: str, label: str) -> None:
    if value != expected:
        raise ModelFileError(f"{label}: model_config.json has {key} = {value!r}; only {expected!r} (VideoReward's) is supported")


def read_settings(folder: Path, label: str) -> VideoRewardSettings:
    """The settings in `folder`/model_config.json, checked to be the kind this reward reproduces."""
    path = folder / MODEL_CONFIG
    if not path.is_file():
        raise ModelFileError(f"{label}: {folder.name} has no {MODEL_CONFIG} (expected the VideoReward folder)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{label}: {path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelFileError(f"{label}: {path} does not hold a table")
    data, model = _section(config, "data_config", path, label), _section(config, "model_config", path, label)
    lora = _section(config, "peft_lora_config", path, label)
    _require(data.get("prompt_template_type"), "detailed_special", "data_config.prompt_template_type", label)
    _require(data.get("sample_type", "uniform"), "uniform", "data_config.sample_type", label)
    _require(list(data.get("eval_dim", [])), list(DIMENSIONS), "data_config.eval_dim", label)
    _require(model.get("use_special_tokens"), True, "model_config.use_special_tokens", label)
    _require(model.get("reward_token", "special"), "special", "model_config.reward_token", label)
    output_dim = model.get("output_dim")
    if output_dim not in (1, len(DIMENSIONS)):
        raise ModelFileError(f"{label}: model_config.output_dim is {output_dim!r}; VideoReward's head gives 1 or 3 outputs")
    inference = config.get("inference_config")
    norm = None
    if inference is not None:
        try:
            norm = {dim: (float(inference[f"{dim}_mean"]), float(inference[f"{dim}_std"])) for dim in DIMENSIONS}
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{label}: model_config.json's inference_config lacks a mean or std: {err}") from err
    scale = None
    if lora.get("lora_enable"):  # PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA
        scale = lora["lora_alpha"] / (math.sqrt(lora["lora_r"]) if lora.get("use_rslora") else lora["lora_r"])
    num_frames = data.get("num_frames")
    return VideoRewardSettings(
        fps=float(data.get("fps") or 2.0), num_frames=None if num_frames is None else int(num_frames),
        max_pixels=int(data["max_frame_pixels"]), output_dim=int(output_dim), lora_scale=scale, norm=norm,
        base_model=str(model.get("model_name_or_path") or BASE_MODEL),
    )


def latest_checkpoint(folder: Path, label: str) -> Path:
    """The checkpoint-<step> folder with the highest step, as upstream picks by default; it must hold model.pth."""
    steps = {int(p.name.split("-")[-1]): p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()}
    if not steps:
        raise ModelFileError(f"{label}: {folder.name} has no checkpoint-<step> folder (expected checkpoint-11352/ of VideoReward)")
    checkpoint = steps[max(steps)]
    if not (checkpoint / WEIGHTS).is_file():
        raise ModelFileError(
            f"{label}: {folder.name}/{checkpoint.name} has no {WEIGHTS} (the full weights VideoReward publishes; "
            "a LoRA-only checkpoint needs the base model's weights, which this reward does not load)"
        )
    return checkpoint


def load_tokenizer(folder: Path, label: str) -> Any:
    """The checkpoint's tokenizer, which must know the reward tokens and have a chat template."""
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise ModelFileError(f"{label}: {folder.parent.name} has no tokenizer/ folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelFileError(f"{label}: the tokenizer in {folder} could not be loaded: {err}") from err
    unknown = [t for t in (*REWARD_TOKENS, VIDEO_TOKEN) if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if unknown:
        raise ModelFileError(f"{label}: the tokenizer in {folder} lacks {', '.join(unknown)}")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelFileError(f"{label}: the tokenizer in {folder} has no chat template")
    return tokenizer


def base_config(folder: Path, settings: VideoRewardSettings, vocab_size: int, label: str) -> Any:
    """The Qwen2-VL config: `folder`/config.json when present, else Qwen2-VL-2B-Instruct's; vocabulary `vocab_size`."""
    from transformers import Qwen2VLConfig

    path = folder / "config.json"
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFileError(f"{label}: {path} is not valid JSON: {err}") from err
    elif settings.base_model.rstrip("/").endswith(BASE_MODEL.split("/")[-1]):
        values = QWEN2_VL_2B
    else:
        raise ModelFileError(
            f"{label}: the base model is {settings.base_model}, not {BASE_MODEL}; put its config.json in {folder.name}"
        )
    if values.get("model_type") != "qwen2_vl":
        raise ModelFileError(f"{label}: {path.name} is not a Qwen2-VL config (model_type {values.get('model_type')!r})")
    config = Qwen2VLConfig.from_dict(copy.deepcopy(values))  # it may change nested tables in place
    config.text_config.vocab_size = vocab_size  # upstream resizes the embeddings to the tokenizer with the reward tokens
    return config


def merged_state(
    state: dict[str, torch.Tensor], lora_scale: float | None, dtype: torch.dtype, label: str
) -> dict[str, torch.Tensor]:
    """model.pth's state dict without its PEFT wrapping: LoRA merged into its base layers (W + scale B A, computed in
    float32, kept in `dtype`)."""
    if lora_scale is not None:
        stray = [k for k in state if not k.startswith(PEFT_PREFIX)]
        if stray:
            raise ModelFileError(f"{label}: {WEIGHTS} has keys outside the LoRA model ({', '.join(sorted(stray)[:3])})")
        state = {k[len(PEFT_PREFIX):]: v for k, v in state.items()}
    merged = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    for key, down in state.items():
        if ".lora_A." not in key:
            continue
        module, adapter = key.split(".lora_A.")
        up, weight = state.get(f"{module}.lora_B.{adapter}"), merged.get(f"{module}.weight")
        if up is None or weight is None or lora_scale is None:
            raise ModelFileError(f"{label}: {WEIGHTS} has a LoRA layer {module} without its pair or base weight")
        merged[f"{module}.weight"] = (weight.float() + lora_scale * (up.float() @ down.float())).to(dtype)
    return merged


def current_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4.45's Qwen2-VL key names (`visual.*`, `model.*`) in today's (`model.visual.*`, `model.language_model.*`)."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
            key = "model.language_model." + key[len("model."):]
        renamed[key] = value
    return renamed


def round_by(value: float, factor: int) -> int:
    return round(value / factor) * factor


def frame_count(total: int, settings: VideoRewardSettings, source_fps: float) -> int:
    """How many frames upstream samples from a clip of `total` frames (vision_process.py `smart_nframes`)."""
    if settings.num_frames is not None:
        count = round_by(settings.num_frames, FRAME_FACTOR)
    else:
        low = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        high = math.floor(min(FPS_MAX_FRAMES, total) / FRAME_FACTOR) * FRAME_FACTOR
        count = round_by(min(max(total / source_fps * settings.fps, low), high), FRAME_FACTOR)
    count = min(count, total)
    if count < FRAME_FACTOR:
        raise ValueError(f"VideoReward needs a clip of at least {FRAME_FACTOR} frames, got {total}")
    return count


def resized_size(height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int]:
    """Upstream's frame size (vision_process.py `smart_resize`): multiples of `factor`, within the pixel bounds."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"VideoReward takes aspect ratios up to {MAX_ASPECT_RATIO}, got {height}x{width}")
    h, w = max(factor, round_by(height, factor)), max(factor, round_by(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < VIDEO_MIN_PIXELS:
        beta = math.sqrt(VIDEO_MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Qwen2-VL's video patches of normalised frames [T,3,H,W]: `pixel_values_videos` [t*h*w, 3*temporal*patch²]
    ordered by merge window, and (t, h, w)."""
    if pixels.shape[0] % temporal:
        pixels = torch.cat([pixels, pixels[-1:].expand(temporal - pixels.shape[0] % temporal, -1, -1, -1)])
    frames, channels, height, width = pixels.shape
    t, h, w = frames // temporal, height // patch, width // patch
    grid = pixels.reshape(t, temporal, channels, h // merge, merge, patch, w // merge, merge, patch)
    grid = grid.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return grid.reshape(t * h * w, channels * temporal * patch * patch), (t, h, w)


class VideoRewardModel(ClipReward):
    """VideoReward's Overall score of a clip (VQ + MQ + TA, standardised); see the module docstring.

    Scoring runs without gradients unless `differentiable` is set, when the same path carries them to the frames."""

    label = "VideoReward"
    min_frames = FRAME_FACTOR

    def __init__(
        self, model: nn.Module, rm_head: nn.Linear, tokenizer: Any, settings: VideoRewardSettings, label: str,
        source_fps: float = DEFAULT_SOURCE_FPS, differentiable: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.rm_head, self.tokenizer, self.settings = model, rm_head, tokenizer, settings
        self.label, self.source_fps, self.differentiable = label, source_fps, differentiable
        vision = model.config.vision_config
        self.patch, self.merge, self.temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        self.video_token_id = model.config.video_token_id
        self.reward_token_ids = tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, self.model, enabled)

    def encode_text(self, prompt: str) -> torch.Tensor:
        """Token ids of the chat with the prompt, one `<|video_pad|>` standing for the video."""
        text = PROMPT_TEMPLATE.replace("{text_prompt}", prompt)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        chat = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor(self.tokenizer(chat)["input_ids"], dtype=torch.long)
        counts = [int((ids == i).sum()) for i in (self.video_token_id, *self.reward_token_ids)]
        if counts[0] != 1:
            raise ModelFileError(f"{self.label}: the chat template gave {counts[0]} video tokens (id {self.video_token_id}), not 1")
        if counts[1:] != [1, 1, 1]:
            raise ValueError(f"{self.label}: the prompt must not contain the reward tokens {', '.join(REWARD_TOKENS)}")
        return ids

    def video_inputs(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """`pixel_values_videos` (float32) and (t, h, w) of the clip, sampled and resized as upstream does."""
        frames = frames[select_frames(frames.shape[0], "evenly", frame_count(frames.shape[0], self.settings, self.source_fps))]
        frames = frames.to(self.mean.device, torch.float32)
        size = resized_size(frames.shape[-2], frames.shape[-1], self.patch * self.merge, self.settings.max_pixels)
        if size != tuple(frames.shape[-2:]):
            frames = F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return patchify((frames - self.mean) / self.std, self.patch, self.merge, self.temporal)

    def dimension_scores(self, frames: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The head's raw VQ, MQ, TA [3] (float32) for the clip and the prompt's token ids."""
        pixels, grid = self.video_inputs(frames)
        visual, language = self.model.model.visual, self.model.model.language_model
        video = model_output(visual(pixels.to(visual.dtype), grid_thw=torch.tensor([grid], device=pixels.device)), "pooler_output")
        at = (ids == self.video_token_id).nonzero().item()
        ids = torch.cat([ids[:at], ids.new_full((video.shape[0],), self.video_token_id), ids[at + 1:]])
        embeds = language.embed_tokens(ids[None])
        mask = (ids == self.video_token_id)[None, :, None].expand_as(embeds)
        embeds = embeds.masked_scatter(mask, video.to(embeds.dtype))
        hidden = model_output(language(inputs_embeds=embeds, use_cache=False), "last_hidden_state")[0]
        positions = torch.isin(ids, torch.tensor(self.reward_token_ids, device=ids.device))
        logits = self.rm_head(hidden[positions]).float()  # [3, output_dim], in sequence order: VQ, MQ, TA
        return logits.diagonal() if logits.shape[1] == len(DIMENSIONS) else logits.reshape(-1)

    def score_clip(self, frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with contextlib.nullcontext() if self.differentiable else torch.no_grad():
            scores = self.dimension_scores(frames, text)
            if self.settings.norm is not None:
                mean, std = (scores.new_tensor([self.settings.norm[d][i] for d in DIMENSIONS]) for i in (0, 1))
                scores = (scores - mean) / std
            overall = scores.sum()
        self.last_sub_scores = {**dict(zip(DIMENSIONS, scores.tolist())), "Overall": overall.item()}
        return overall.to(frames.device)


def load_video_reward(folder: Path, encoder: None, dtype: torch.dtype, label: str) -> VideoRewardModel:
    """VideoReward from its official folder (model_config.json, checkpoint-<step>/model.pth and tokenizer/)."""
    from transformers import Qwen2VLForConditionalGeneration

    if not folder.is_dir():
        raise ModelFileError(f"{label}: {folder} is not a folder (expected the VideoReward folder)")
    settings = read_settings(folder, label)
    checkpoint = latest_checkpoint(folder, label)
    tokenizer = load_tokenizer(checkpoint / "tokenizer", label)
    config = base_config(folder, settings, len(tokenizer), label)
    state = merged_state(read_weights(checkpoint / WEIGHTS), settings.lora_scale, dtype, label)
    head = state.pop("rm_head.weight", None)
    hidden = config.text_config.hidden_size
    if head is None or tuple(head.shape) != (settings.output_dim, hidden):
        found = "none" if head is None else f"shape {list(head.shape)}"
        raise ModelFileError(
            f"{label}: {checkpoint.name}/{WEIGHTS} lacks the reward head rm_head.weight of shape "
            f"[{settings.output_dim}, {hidden}] (found {found})"
        )
    model = load_strict(Qwen2VLForConditionalGeneration, None, dtype, label, config=config, state_dict=current_layout(state))
    rm_head = nn.Linear(hidden, settings.output_dim, bias=False, dtype=dtype)
    with torch.no_grad():
        rm_head.weight.copy_(head)
    return VideoRewardModel(model, rm_head, tokenizer, settings, label)
