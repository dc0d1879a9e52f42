"""fp8 (e4m3) weight storage for Linear layers, scaled per block of input features, dequantized on use.

The layer stays the same module object (dequant_linear.py says why). Each row of the weight is split into blocks of `BLOCK` input features with one fp32 scale per block
(amax / 448), which bounds the relative rounding error of every weight by e4m3's 2^-4 step instead of
letting one outlier row or column set the scale for the whole matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cadence.perf.dequant_linear import DequantLinear, convert_linear, quantize_all

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
BLOCK = 128


def quantize_blockwise(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (fp8 [out, nb, block], fp32 scales [out, nb, 1]); `in` is zero-padded to nb*block."""
    out_f, in_f = weight.shape
    block = min(block, in_f)
    nb = -(-in_f // block)
    w = weight.detach().float()
    if nb * block != in_f:
        w = F.pad(w, (0, nb * block - in_f))
    w = w.view(out_f, nb, block)
    scale = w.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (w / scale).to(FP8), scale


def dequantize_blockwise(
    q: torch.Tensor, scale: torch.Tensor, in_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of `quantize_blockwise`, in `dtype`, cut back to `in_features` columns."""
    w = q.to(scale.dtype) * scale
    return w.flatten(1)[:, :in_features].to(dtype)


class Fp8Linear(DequantLinear):
    """A Linear whose weight lives as block-scaled e4m3 buffers (`qweight`, `qscale`)."""

    qweight: torch.Tensor
    qscale: torch.Tensor

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_blockwise(self.qweight, self.qscale, self.in_features, dtype)


def to_fp8(module: nn.Linear, block: int = BLOCK) -> Fp8Linear:
    """Quantize `module` in place (same object, class switched); bias stays in its dtype."""

    def encode(weight: torch.Tensor) -> dict[str, torch.Tensor]:
        q, scale = quantize_blockwise(weight, block)
        return {"qweight": q, "qscale": scale}

    return convert_linear(module, Fp8Linear, encode)  # type: ignore[return-value]


def quantize_linears_fp8(linears: dict[str, nn.Linear], block: int = BLOCK) -> int:
    """Quantize every given Linear in place; returns how many bytes of weight storage were saved."""
    return quantize_all(linears, lambda module: to_fp8(module, block))
