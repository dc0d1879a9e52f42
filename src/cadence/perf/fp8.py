"""fp8 (e4m3) weight storage for Linear layers, scaled per block of input features, dequantized on use.

Why in place: the quantized layer stays the *same module object* (its class is switched to `Fp8Linear`,
a Linear subclass), so LoRA forward hooks registered before or after quantization keep firing, module
names and `in_features/out_features` are unchanged, and block swap moves its buffers like any others.
Each row of the weight is split into blocks of `BLOCK` input features with one fp32 scale per block
(amax / 448), which bounds the relative rounding error of every weight by e4m3's 2^-4 step instead of
letting one outlier row or column set the scale for the whole matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


class Fp8Linear(nn.Linear):
    """A Linear whose weight lives as block-scaled e4m3 buffers; `weight` dequantizes on access."""

    qweight: torch.Tensor
    qscale: torch.Tensor

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return dequantize_blockwise(self.qweight, self.qscale, self.in_features, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_blockwise(self.qweight, self.qscale, self.in_features, x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)


def to_fp8(module: nn.Linear, block: int = BLOCK) -> Fp8Linear:
    """Quantize `module` in place (same object, class switched); bias stays in its dtype."""
    if isinstance(module, Fp8Linear):
        return module
    if type(module) is not nn.Linear:
        raise TypeError(f"fp8 quantization expects a plain nn.Linear, got {type(module).__name__}")
    weight = module._parameters.pop("weight")
    q, scale = quantize_blockwise(weight, block)
    module.__class__ = Fp8Linear
    module.compute_dtype = weight.dtype
    module.register_buffer("qweight", q.to(weight.device))
    module.register_buffer("qscale", scale.to(weight.device))
    return module  # type: ignore[return-value]


def quantize_linears_fp8(linears: dict[str, nn.Linear], block: int = BLOCK) -> int:
    """Quantize every given Linear in place; returns how many bytes of weight storage were saved."""
    saved = 0
    for module in linears.values():
        before = module.weight.numel() * module.weight.element_size()
        to_fp8(module, block)
        saved += before - module.qweight.numel() - module.qscale.numel() * 4
    return saved
