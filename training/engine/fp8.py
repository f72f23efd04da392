"""fp8 base weights: the frozen Linear weights of the trained transformer stored as float8 (e4m3fn) with one float32
scale per tensor (as ComfyUI's "fp8 scaled" files hold them) and upcast per layer inside the forward.

The upcast weight is a temporary of one layer's call: the layer's autograd function saves the float8 weight and its
scale, not the upcast copy, and upcasts again in the backward for the input's gradient (the frozen weight has none),
so no upcast copy outlives its matmul. The LoRA layers beside the base weights keep their own dtype and train as usual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..scaled_fp8 import broadcast_scale, quantise_fp8

FP8_FORMAT = torch.float8_e4m3fn


def upcast(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float8 `weight` times its float32 `scale`, in `dtype` (rounded once)."""
    return (weight.to(dtype) * broadcast_scale(scale, weight.shape)).to(dtype)


class Fp8Matmul(torch.autograd.Function):
    """`x @ upcast(weight).T + bias` for a frozen float8 weight, saving only the float8 weight and its scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x, upcast(weight, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        weight, scale = ctx.saved_tensors
        return grad.matmul(upcast(weight, scale, grad.dtype)), None, None, None


class Fp8Linear(nn.Linear):
    """A frozen Linear whose weight is float8 with the float32 scale buffer `weight_scale`; it computes in the
    autocast dtype when autocast is on, else in its input's dtype (as a Linear of that dtype would)."""

    weight_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return Fp8Matmul.apply(x.to(dtype), self.weight, self.weight_scale, bias)


def check_lora_bases(model: nn.Module) -> None:
    """Raise ValueError naming a LoRA layer whose base layer is not a Linear (fp8 base weights cover Linears only)."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not isinstance(module.get_base_layer(), nn.Linear):
            raise ValueError(f"fp8_base: the LoRA targets {name}, a {type(module.get_base_layer()).__name__}; fp8 base "
                             "weights cover Linear layers only: leave fp8_base off or drop that target")


def quantise_linears(model: nn.Module) -> int:
    """Store every frozen Linear weight of `model` (peft's base layers included; not those of the modules the model
    keeps in float32, `_keep_in_fp32_modules`) as float8 with a per-tensor scale; returns how many."""
    check_lora_bases(model)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    count = 0
    for name, module in model.named_modules():
        frozen = type(module) is nn.Linear and not any(p.requires_grad for p in module.parameters())
        if frozen and not keep.intersection(name.split(".")):
            weight, scale = quantise_fp8(module.weight.detach().float(), FP8_FORMAT)
            module.weight.data = weight
            module.register_buffer("weight_scale", scale.to(weight.device))
            module.__class__ = Fp8Linear
            count += 1
    return count
