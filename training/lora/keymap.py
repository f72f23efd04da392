"""LoRA module names per model family: the original names the published files use, and diffusers' names.

Each family lists its LoRA-able Linear modules as (original, diffusers) name templates, `{n}` standing for a
block index. Everything else derives from that table: reading the flattened `lora_unet__` stems back into dotted
names, recognising a family from its names, and renaming between the original and diffusers conventions.
Original names: CogVideoX-Fun as diffusers; EasyAnimate with its text stream in `attn2`; Wan as in the official
checkpoints and ComfyUI's native model.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

WAN, COGVIDEOX, EASYANIMATE = "wan", "cogvideox", "easyanimate"
FAMILY_LABELS = {WAN: "Wan2.1/2.2", COGVIDEOX: "CogVideoX-Fun", EASYANIMATE: "EasyAnimate"}

_COG_BLOCK = [
    ("transformer_blocks.{n}.attn1.to_q", "transformer_blocks.{n}.attn1.to_q"),
    ("transformer_blocks.{n}.attn1.to_k", "transformer_blocks.{n}.attn1.to_k"),
    ("transformer_blocks.{n}.attn1.to_v", "transformer_blocks.{n}.attn1.to_v"),
    ("transformer_blocks.{n}.attn1.to_out.0", "transformer_blocks.{n}.attn1.to_out.0"),
    ("transformer_blocks.{n}.ff.net.0.proj", "transformer_blocks.{n}.ff.net.0.proj"),
    ("transformer_blocks.{n}.ff.net.2", "transformer_blocks.{n}.ff.net.2"),
    ("transformer_blocks.{n}.norm1.linear", "transformer_blocks.{n}.norm1.linear"),
    ("transformer_blocks.{n}.norm2.linear", "transformer_blocks.{n}.norm2.linear"),
]
_COG_TOP = [
    ("norm_out.linear", "norm_out.linear"),
    ("proj_out", "proj_out"),
    ("time_embedding.linear_1", "time_embedding.linear_1"),
    ("time_embedding.linear_2", "time_embedding.linear_2"),
]

MODULES: dict[str, list[tuple[str, str]]] = {
    COGVIDEOX: _COG_BLOCK + _COG_TOP + [
        ("patch_embed.text_proj", "patch_embed.text_proj"),
        ("patch_embed.proj", "patch_embed.proj"),  # a Linear from V1.5 on (a conv, so never a LoRA key, in V1.1)
        ("ofs_embedding.linear_1", "ofs_embedding.linear_1"),
        ("ofs_embedding.linear_2", "ofs_embedding.linear_2"),
    ],
    EASYANIMATE: _COG_BLOCK + _COG_TOP + [
        ("transformer_blocks.{n}.attn2.to_q", "transformer_blocks.{n}.attn1.add_q_proj"),
        ("transformer_blocks.{n}.attn2.to_k", "transformer_blocks.{n}.attn1.add_k_proj"),
        ("transformer_blocks.{n}.attn2.to_v", "transformer_blocks.{n}.attn1.add_v_proj"),
        ("transformer_blocks.{n}.attn2.to_out.0", "transformer_blocks.{n}.attn1.to_add_out"),
        ("transformer_blocks.{n}.txt_ff.net.0.proj", "transformer_blocks.{n}.txt_ff.net.0.proj"),
        ("transformer_blocks.{n}.txt_ff.net.2", "transformer_blocks.{n}.txt_ff.net.2"),
        ("text_proj", "text_proj"),
        ("text_proj_t5", "text_proj_t5"),
    ],
    WAN: [
        ("blocks.{n}.self_attn.q", "blocks.{n}.attn1.to_q"),
        ("blocks.{n}.self_attn.k", "blocks.{n}.attn1.to_k"),
        ("blocks.{n}.self_attn.v", "blocks.{n}.attn1.to_v"),
        ("blocks.{n}.self_attn.o", "blocks.{n}.attn1.to_out.0"),
        ("blocks.{n}.cross_attn.q", "blocks.{n}.attn2.to_q"),
        ("blocks.{n}.cross_attn.k", "blocks.{n}.attn2.to_k"),
        ("blocks.{n}.cross_attn.v", "blocks.{n}.attn2.to_v"),
        ("blocks.{n}.cross_attn.o", "blocks.{n}.attn2.to_out.0"),
        ("blocks.{n}.cross_attn.k_img", "blocks.{n}.attn2.add_k_proj"),
        ("blocks.{n}.cross_attn.v_img", "blocks.{n}.attn2.add_v_proj"),
        ("blocks.{n}.ffn.0", "blocks.{n}.ffn.net.0.proj"),
        ("blocks.{n}.ffn.2", "blocks.{n}.ffn.net.2"),
        ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
        ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
        ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
        ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
        ("time_projection.1", "condition_embedder.time_proj"),
        ("head.head", "proj_out"),
        ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
        ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ],
}
# Every CogVideoX name is also an EasyAnimate name, so a file is recognised by the first family here that
# fits all its names; an EasyAnimate model still takes a file recognised as CogVideoX (see `fits`).
DETECTION_ORDER = (WAN, COGVIDEOX, EASYANIMATE)


class LoraKeyError(ValueError):
    """A LoRA name that no supported family has, or names of another family than expected."""


def _pattern(template: str, separator: str) -> re.Pattern[str]:
    escaped = re.escape(template.replace(".", separator)).replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile(escaped + "$")


@lru_cache(maxsize=None)
def _compiled(family: str, column: int, separator: str) -> list[tuple[re.Pattern[str], tuple[str, str]]]:
    return [(_pattern(pair[column], separator), pair) for pair in MODULES[family]]


def _convert(family: str, name: str, column: int, separator: str, target: int) -> str | None:
    for pattern, pair in _compiled(family, column, separator):
        if match := pattern.match(name):
            return pair[target].replace("{n}", match.group("n")) if "{n}" in pair[target] else pair[target]
    return None


def unflatten(family: str, stem: str) -> str | None:
    """The dotted original name of a flattened stem (`blocks_0_self_attn_q` -> `blocks.0.self_attn.q`)."""
    return _convert(family, stem, 0, "_", 0)


def to_diffusers(family: str, original: str) -> str | None:
    return _convert(family, original, 0, ".", 1)


def from_diffusers(family: str, diffusers_name: str) -> str | None:
    return _convert(family, diffusers_name, 1, ".", 0)


def flatten(name: str) -> str:
    return name.replace(".", "_")


def detect_family(names: Iterable[str], flat: bool = False) -> tuple[str, dict[str, str]]:
    """(family, {given name: original dotted name}) for LoRA module names, original or diffusers style.

    Raises LoraKeyError naming the unknown names when no family fits them all."""
    names = list(names)
    if not names:
        raise LoraKeyError("the file holds no LoRA modules")
    best: tuple[int, str, list[str]] | None = None
    for family in DETECTION_ORDER:
        readers = [lambda n, f=family: unflatten(f, n)] if flat else [
            lambda n, f=family: _convert(f, n, 0, ".", 0),
            lambda n, f=family: from_diffusers(f, n),
        ]
        for read in readers:
            mapped = {name: read(name) for name in names}
            missing = [n for n, m in mapped.items() if m is None]
            if not missing:
                return family, mapped  # type: ignore[return-value]
            if best is None or len(missing) < best[0]:
                best = (len(missing), family, missing)
    assert best is not None
    count, family, missing = best
    shown = ", ".join(sorted(missing)[:4])
    raise LoraKeyError(
        f"{count} of {len(names)} LoRA modules belong to no supported model (closest: {FAMILY_LABELS[family]}); "
        f"e.g. {shown}"
    )


def fits(family: str, originals: Iterable[str]) -> bool:
    """Whether every original dotted name is a LoRA-able module of `family`."""
    return all(_convert(family, name, 0, ".", 0) is not None for name in originals)
