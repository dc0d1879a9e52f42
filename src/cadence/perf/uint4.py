"""uint4 weight storage for Linear layers: asymmetric, one scale and zero point per group of 64 inputs.

The arithmetic reproduces torchao 0.10's `UIntXWeightOnlyConfig(torch.uint4)` bit for bit (min/max per group
with zero kept in range, scale = (max - min) / 15 in the weight's dtype, zero point = -round(min / scale),
q = clamp(round(w * (1 / scale)) + zero point, 0, 15), w' = (q - zero point) * scale). That is the
quantization ai-toolkit's `uint4` uses and the one its accuracy-recovery adapters were trained to correct,
so an adapter file recovers the error it was made for (tests/perf/uint4_torchao010_golden.safetensors holds
torchao's own output). Two codes are packed per byte: about 0.55 bytes per weight with the group
parameters, against 2 for bf16.
"""

from __future__ import annotations

import torch
from torch import nn

from cadence.perf.dequant_linear import DequantLinear, convert_linear, quantize_all

GROUP = 64
QMAX = 15
EPS = torch.finfo(torch.float32).eps


def quantize_uint4(
    weight: torch.Tensor, group: int = GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[out, in] -> (codes uint8 [out, in], scale [out, in/group] in weight's dtype, zero point uint8)."""
    out_f, in_f = weight.shape
    group = min(group, in_f)  # a layer narrower than one group (tiny test models) gets one group per row
    if in_f % group:
        raise ValueError(f"uint4 needs in_features divisible by {group}, got {in_f}")
    w = weight.detach().reshape(out_f, in_f // group, group)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    low = torch.minimum(w.amin(dim=-1), zero)
    high = torch.maximum(w.amax(dim=-1), zero)
    scale = ((high - low) / float(QMAX)).clamp(min=EPS)
    zero_point = (0 - torch.round(low / scale)).clamp(0, QMAX).to(torch.int32)
    codes = torch.round(w * (1.0 / scale).unsqueeze(-1)) + zero_point.unsqueeze(-1)
    codes = codes.clamp(0, QMAX).to(torch.uint8).reshape(out_f, in_f)
    return codes, scale, zero_point.to(torch.uint8)


def dequantize_uint4(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of `quantize_uint4` (codes unpacked), computed in the scale's dtype, returned in `dtype`."""
    out_f, in_f = codes.shape
    groups = scale.shape[-1]
    q = codes.reshape(out_f, groups, in_f // groups).to(torch.int32) - zero_point.to(torch.int32).unsqueeze(
        -1
    )
    return (q.to(scale.dtype) * scale.unsqueeze(-1)).reshape(out_f, in_f).to(dtype)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: even columns in the low nibble, odd in the high one."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(1)


class Uint4Linear(DequantLinear):
    """A Linear whose weight lives as packed uint4 codes plus per-group scale and zero point."""

    qweight: torch.Tensor
    qscale: torch.Tensor
    qzero: torch.Tensor

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_uint4(unpack(self.qweight), self.qscale, self.qzero, dtype)


def to_uint4(module: nn.Linear, group: int = GROUP) -> Uint4Linear:
    """Quantize `module` in place (same object, class switched); bias stays in its dtype."""

    def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, scale, zero_point = quantize_uint4(weight, group)
        return {"qweight": pack(codes), "qscale": scale, "qzero": zero_point}

    return convert_linear(module, Uint4Linear, encode)  # type: ignore[return-value]


def quantize_linears_uint4(linears: dict[str, nn.Linear], group: int = GROUP) -> int:
    """Quantize every given Linear in place; returns how many bytes of weight storage were saved."""
    return quantize_all(linears, lambda module: to_uint4(module, group))
