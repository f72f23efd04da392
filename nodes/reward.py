"""Nodes to load reward models, mix them, score a video and rank candidate videos."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..reward.composite import FRAME_MODES, CompositeReward, RewardTerm, select_frames
from ..reward.files import list_entries
from ..reward.plot import draw_panels, frame_grid, score_panel
from ..reward.registry import REWARDS, load_reward
from ..reward.seeds import MAX_SEED
from ..reward.scoring import VideoScore, compare_videos, rank_videos, score_video, split_videos
from .folders import reward_model_roots
from .types import LoadedReward, RewardModelType

CATEGORY = "video reward/scoring"
AUTO = "auto (official name)"
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LABELS = {spec.label: key for key, spec in REWARDS.items()}
GRID_FRAMES = 6  # evenly spaced frames of each video in Compare Videos' picture


def _frame_inputs() -> list[io.Input]:
    return [
        io.Combo.Input(
            "frames", options=list(FRAME_MODES), default="all",
            tooltip="Which frames are scored: all, only the first, N evenly spaced (first and last included), or N at random.",
        ),
        io.Int.Input("frame_count", default=8, min=1, max=4096, tooltip="N for 'evenly' and 'random' frame selection."),
        io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                     tooltip="Seed for 'random' frame selection."),
    ]


def _video(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE `[N,H,W,C]` to frames `[N,3,H,W]`."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"expected IMAGE frames [N,H,W,3], got shape {tuple(images.shape)}")
    return images[..., :3].permute(0, 3, 1, 2)


def _chart(reward: torch.nn.Module, result: VideoScore) -> torch.Tensor:
    """Score Video's plot as an IMAGE; a single reward's chart uses its typical range, so two videos' charts share it."""
    spec = getattr(reward, "spec", None)
    if result.whole_clip:  # one score for the clip: drawn across it
        indices, scores = [result.frame_indices[0], result.frame_indices[-1]], [result.score] * 2
    else:
        indices, scores = result.frame_indices, result.frame_scores
    panel = score_panel(reward.label, indices, scores, spec.norm if spec is not None else None)
    return torch.from_numpy(draw_panels([panel])).float().div(255.0).unsqueeze(0)


def _comparison_grid(videos: list[torch.Tensor], captions: list[str]) -> torch.Tensor:
    """Compare Videos' picture as an IMAGE: one row of `GRID_FRAMES` evenly spaced frames per video (at the first
    video's size), each frame captioned with its row's caption and its number."""
    import torch.nn.functional as F

    count = min(GRID_FRAMES, *(v.shape[0] for v in videos))
    size = videos[0].shape[-2:]
    tiles, texts = [], []
    for video, caption in zip(videos, captions):
        indices = select_frames(video.shape[0], "evenly", count)
        picked = video[indices].float()
        if picked.shape[-2:] != size:
            picked = F.interpolate(picked, size=tuple(size), mode="bilinear", antialias=True)
        tiles.append(picked)
        texts += [f"{caption}, frame {i}" for i in indices]
    pixels = torch.cat(tiles).clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(frame_grid(pixels, texts, columns=count)).float().div(255.0).unsqueeze(0)


def _progress(videos: list[torch.Tensor], mode: str, count: int, seed: int):
    """A ComfyUI progress bar over every frame that will be scored; returns its update function."""
    import comfy.utils

    total = sum(len(select_frames(v.shape[0], mode, count, seed)) for v in videos)
    return comfy.utils.ProgressBar(total).update


class LoadRewardModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        entries = [AUTO, *list_entries(reward_model_roots())]
        return io.Schema(
            node_id="VideoRewardModelLoader",
            display_name="Load Reward Model",
            category=CATEGORY,
            description="Loads a preference model that scores frames, from models/reward_models.",
            inputs=[
                io.Combo.Input("model", options=list(LABELS), default="HPS v2.1", tooltip="Which preference model to load."),
                io.Combo.Input(
                    "checkpoint", options=entries, default=AUTO,
                    tooltip="The model's weights in models/reward_models. 'auto' uses the official name: "
                    + "; ".join(f"{s.label}: {s.checkpoint}" for s in REWARDS.values() if s.checkpoint),
                ),
                io.Combo.Input(
                    "encoder", options=entries, default=AUTO,
                    tooltip="The tokenizer folder (HPS, PickScore, MPS) or image-encoder folder (aesthetic) in "
                    "models/reward_models. 'auto' uses the official name: "
                    + "; ".join(f"{s.label}: {s.encoder}" for s in REWARDS.values() if s.encoder)
                    + ". Flicker and dynamism use no files",
                ),
                io.Combo.Input(
                    "precision", options=list(PRECISIONS), default="auto",
                    tooltip="Weight precision. auto: fp16 on a GPU, fp32 on the CPU.",
                ),
                io.Int.Input(
                    "micro_batch", default=8, min=1, max=256,
                    tooltip="Frames scored at once; lower it if scoring runs out of memory.",
                ),
            ],
            outputs=[RewardModelType.Output(display_name="reward_model")],
        )

    @classmethod
    def execute(cls, model: str, checkpoint: str, encoder: str, precision: str, micro_batch: int) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.model_patcher

        if model not in LABELS:
            raise ValueError(f"unknown reward model '{model}'; choose one of {', '.join(LABELS)}")
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
        dtype = PRECISIONS[precision] or (torch.float32 if mm.is_device_cpu(load_device) else torch.float16)
        reward = load_reward(
            LABELS[model],
            reward_model_roots(),
            checkpoint=None if checkpoint == AUTO else checkpoint,
            encoder=None if encoder == AUTO else encoder,
            dtype=dtype,
            device=offload_device,
            micro_batch=micro_batch,
        )
        patcher = comfy.model_patcher.ModelPatcher(reward, load_device=load_device, offload_device=offload_device)
        return io.NodeOutput(LoadedReward(reward, [patcher], micro_batch))


class CombineRewards(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs: list[io.Input] = []
        for n in (1, 2, 3):
            inputs += [
                RewardModelType.Input(f"reward_{n}", optional=n > 1, tooltip=f"Reward model {n}."),
                io.Float.Input(
                    f"weight_{n}", default=1.0, min=-100.0, max=100.0, step=0.05, optional=n > 1,
                    tooltip=f"Weight of reward {n} in the sum.",
                ),
            ]
        inputs.append(
            io.Boolean.Input(
                "normalize", default=True,
                tooltip="Put each score on a common scale, (score - mean) / std with per-model estimates, before weighting.",
            )
        )
        return io.Schema(
            node_id="VideoRewardCombine",
            display_name="Combine Rewards",
            category=CATEGORY,
            description="A weighted sum of several reward models, usable wherever one reward model is.",
            inputs=inputs,
            outputs=[RewardModelType.Output(display_name="reward_model")],
        )

    @classmethod
    def execute(
        cls, reward_1: LoadedReward, weight_1: float, normalize: bool,
        reward_2: LoadedReward | None = None, weight_2: float = 1.0,
        reward_3: LoadedReward | None = None, weight_3: float = 1.0,
    ) -> io.NodeOutput:
        terms, patchers = [], []
        for loaded, weight in ((reward_1, weight_1), (reward_2, weight_2), (reward_3, weight_3)):
            if loaded is None:
                continue
            parts = loaded.reward.terms if isinstance(loaded.reward, CompositeReward) else [RewardTerm(loaded.reward)]
            for part in parts:
                mean, std = part.model.spec.norm if normalize else (0.0, 1.0)
                terms.append(RewardTerm(part.model, part.weight * weight, mean, std))
            patchers += loaded.patchers
        micro_batch = min(r.micro_batch for r in (reward_1, reward_2, reward_3) if r is not None)
        return io.NodeOutput(LoadedReward(CompositeReward(terms), patchers, micro_batch))


class ScoreVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoRewardScore",
            display_name="Score Video",
            category=CATEGORY,
            description="Scores the frames of one video with a reward model; the video score is the mean over frames.",
            inputs=[
                io.Image.Input("images", tooltip="The video's frames (an IMAGE batch)."),
                RewardModelType.Input("reward_model", tooltip="From Load Reward Model or Combine Rewards."),
                io.String.Input("prompt", multiline=True, default="", tooltip="The prompt the video was made from."),
                *_frame_inputs(),
            ],
            outputs=[
                io.Float.Output(display_name="score", tooltip="Mean score over the scored frames."),
                io.String.Output(display_name="frame_scores", tooltip="Per-frame scores as text."),
                io.Image.Output(display_name="plot", tooltip="Per-frame scores as a chart."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, reward_model: LoadedReward, prompt: str, frames: str, frame_count: int, seed: int) -> io.NodeOutput:
        video = _video(images)
        progress = _progress([video], frames, frame_count, seed)
        reward_model.load()
        result = score_video(reward_model.reward, video, prompt, frames, frame_count, seed, reward_model.micro_batch, progress)
        plot = _chart(reward_model.reward, result)
        text = result.describe()
        return io.NodeOutput(result.score, text, plot, ui=ui.PreviewText(text))


class RankVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoRewardRank",
            display_name="Rank Videos",
            category=CATEGORY,
            description="Scores several candidate videos for one prompt and returns the best one.",
            inputs=[
                io.Image.Input(
                    "images",
                    tooltip="The candidates: a list of videos, or one batch holding them back to back (see frames_per_video).",
                ),
                RewardModelType.Input("reward_model", tooltip="From Load Reward Model or Combine Rewards."),
                io.String.Input("prompt", multiline=True, default="", tooltip="The prompt the videos were made from."),
                io.Int.Input(
                    "frames_per_video", default=0, min=0, max=100000,
                    tooltip="Cut a single batch into videos of this many frames. 0: each image is one candidate, "
                    "or, when a list of videos arrives, each list item is one candidate.",
                ),
                *_frame_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="best", tooltip="The frames of the best-scoring video."),
                io.Int.Output(display_name="best_index", tooltip="Its position among the candidates (from 0)."),
                io.String.Output(display_name="ranking", tooltip="Every candidate's score, best first."),
            ],
            is_input_list=True,
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, reward_model, prompt, frames_per_video, frames, frame_count, seed) -> io.NodeOutput:
        per_video = frames_per_video[0]
        if len(images) > 1:
            if per_video:
                raise ValueError("frames_per_video cuts one batch; with a list of videos, leave it at 0")
            videos = [_video(v) for v in images]
        else:
            batch = _video(images[0])
            videos = split_videos(batch, per_video) if per_video else list(batch.split(1))
        loaded: LoadedReward = reward_model[0]
        loaded.load()
        mode, count, seed_value = frames[0], frame_count[0], seed[0]
        ranked = rank_videos(
            loaded.reward, videos, prompt[0], mode=mode, count=count, seed=seed_value,
            micro_batch=loaded.micro_batch, progress=_progress(videos, mode, count, seed_value),
        )
        best_index = ranked[0][0]
        text = "\n".join(f"#{place + 1}: video {i} score {s.score:.6g}" for place, (i, s) in enumerate(ranked))
        best = videos[best_index].permute(0, 2, 3, 1)
        return io.NodeOutput(best, best_index, text, ui=ui.PreviewText(text))


class CompareVideos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoRewardCompare",
            display_name="Compare Videos",
            category=CATEGORY,
            description="Scores two videos (e.g. base and LoRA, same seed) with every reward of a mix, side by side, "
            "and shows both clips' frames.",
            inputs=[
                io.Image.Input("video_a", tooltip="The first video's frames (an IMAGE batch), e.g. without the LoRA."),
                io.Image.Input("video_b", tooltip="The second video's frames (an IMAGE batch), e.g. with the LoRA."),
                RewardModelType.Input("reward_model", tooltip="From Load Reward Model or Combine Rewards."),
                io.String.Input("prompt", multiline=True, default="", tooltip="The prompt the videos were made from."),
                *_frame_inputs(),
                io.String.Input("label_a", default="base", tooltip="The first video's name in the table and picture."),
                io.String.Input("label_b", default="LoRA", tooltip="The second video's name in the table and picture."),
            ],
            outputs=[
                io.String.Output(
                    display_name="comparison",
                    tooltip="Each reward's score of both videos and their difference, and the mix's score.",
                ),
                io.Image.Output(
                    display_name="frames",
                    tooltip=f"Both clips' frames: one row each of up to {GRID_FRAMES} evenly spaced frames, captioned "
                    "with the video's score.",
                ),
                io.Float.Output(display_name="score_a", tooltip="The first video's score (the mix's, or the one reward's)."),
                io.Float.Output(display_name="score_b", tooltip="The second video's score (the mix's, or the one reward's)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, video_a, video_b, reward_model: LoadedReward, prompt: str, frames: str, frame_count: int, seed: int,
        label_a: str, label_b: str,
    ) -> io.NodeOutput:
        videos = [_video(video_a), _video(video_b)]
        progress = _progress(videos, frames, frame_count, seed)
        reward_model.load()
        result = compare_videos(reward_model.reward, *videos, prompt, frames, frame_count, seed, reward_model.micro_batch, progress)
        total = result.total
        grid = _comparison_grid(videos, [f"{label_a}: {total.a:.4g}", f"{label_b}: {total.b:.4g}"])
        text = result.describe(label_a, label_b)
        return io.NodeOutput(text, grid, total.a, total.b, ui=ui.PreviewText(text))


NODES: list[type[io.ComfyNode]] = [LoadRewardModel, CombineRewards, ScoreVideo, RankVideos, CompareVideos]
