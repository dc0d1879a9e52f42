"""A Linear whose weight lives in compressed buffers and is dequantized when used (fp8, uint4).

Why in place: the quantized layer stays the *same module object* (only its class changes to a Linear
subclass), so LoRA forward hooks registered before or after quantization keep firing, module names and
`in_features/out_features` are unchanged, block swap moves its buffers like any others, and the dequantized
weight is an ordinary tensor, so gradients flow to the layer's input (the LoRA needs them) without any
custom backward.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class DequantLinear(nn.Linear):
    """Base class: subclasses define `dequantize(dtype)` from their buffers."""

    compute_dtype: torch.dtype

    @abstractmethod
    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The full weight in `dtype`, rebuilt from this layer's buffers (Fp8Linear, Uint4Linear)."""

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.dequantize(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype), bias)


def convert_linear(
    module: nn.Linear, cls: type[DequantLinear], encode: Callable[[torch.Tensor], dict[str, torch.Tensor]]
) -> DequantLinear:
    """Switch `module` to `cls` in place, its weight replaced by the buffers `encode(weight)` returns."""
    if isinstance(module, cls):
        return module
    if type(module) is not nn.Linear:
        raise TypeError(f"{cls.__name__} expects a plain nn.Linear, got {type(module).__name__}")
    weight = module._parameters.pop("weight")
    buffers = encode(weight.detach())
    module.__class__ = cls
    module.compute_dtype = weight.dtype
    for name, tensor in buffers.items():
        module.register_buffer(name, tensor.to(weight.device))
    return module  # type: ignore[return-value]


def quantize_all(linears: dict[str, nn.Linear], convert: Callable[[nn.Linear], DequantLinear]) -> int:
    """`convert` every given Linear in place; returns how many bytes of weight storage were saved."""
    saved = 0
    for module in linears.values():
        before = module.weight.numel() * module.weight.element_size()
        quantized = convert(module)
        saved += before - sum(b.numel() * b.element_size() for b in quantized.buffers(recurse=False))
    return saved
