"""LoRA (and LoCon: the same pair on a convolution): ΔW = up @ down · alpha / rank.

Numerics (mixed precision): the factors are fp32 masters whatever the base dtype; the bypass computes in the
input's dtype (bf16 when the base runs in bf16), casting the masters to it inside autograd so their
gradients arrive in fp32. Upcasting the activations instead would add an fp32 copy of every adapted layer's
input and fp32 matmuls to every step. `down` is drawn kaiming-uniform (a=sqrt(5), as nn.Linear does) from
the caller's generator, `up` is zero. Dropout acts on the rank-r features and rank dropout masks them per
sample (kohya, ai-toolkit and musubi-tuner do the same), both only in training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cadence.networks.algos.base import AdapterModule, _no_rng
from cadence.networks.tensors import AdapterTensors


class LoRAModule(AdapterModule):
    algo = "lora"

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
        dora_axis: str | None = None,
    ):
        super().__init__(base, alpha, dora_axis)
        self._rank = int(rank)
        ones = [1] * len(self.kernel)
        down = torch.empty(self._rank, self.in_features, *self.kernel)
        up = torch.zeros(self.out_features, self._rank, *ones)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        self.down = nn.Parameter(down.to(self.device))
        self.up = nn.Parameter(up.to(self.device))

    @classmethod
    def from_tensors(cls, base: nn.Module, t: AdapterTensors) -> LoRAModule:
        return cls(base, t.rank, t.alpha if t.alpha is not None else float(t.rank), _no_rng(), t.dora_axis)

    @property
    def rank(self) -> int:
        return self._rank

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down.to(x.dtype)
        return self._op(x, down, **self.conv_args) if self.is_conv else F.linear(x, down)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        up = self.up.to(h.dtype)
        return self._op(h, up) if self.is_conv else F.linear(h, up)

    def bypass(self, x: torch.Tensor, multiplier: float, dropout: float, rank_dropout: float) -> torch.Tensor:
        h = self.hidden(x)
        if dropout > 0:
            h = F.dropout(h, p=dropout)
        scale = multiplier * self.scale
        if rank_dropout > 0:
            # one Bernoulli mask per sample and rank; rank is dim 1 for conv, the last dim for Linear
            keep = (torch.rand(h.shape[0], self.rank, device=h.device) > rank_dropout).to(h.dtype)
            ones = [1] * (h.dim() - 2)
            h = h * (
                keep.view(h.shape[0], self.rank, *ones)
                if self.is_conv
                else keep.view(h.shape[0], *ones, self.rank)
            )
            scale = scale / (1.0 - rank_dropout)
        return self.project(h) * scale

    def factor_delta(self) -> torch.Tensor:
        up = self.up.to(torch.float32).reshape(self.out_features, self.rank)
        down = self.down.to(torch.float32).reshape(self.rank, -1)
        return ((up @ down) * self.scale).reshape(self.weight_shape)

    def factor_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.down, "lora_up.weight": self.up}

    def param_roles(self) -> dict[str, list[nn.Parameter]]:
        up = [self.up] + ([self.dora_scale] if self.has_dora else [])
        return {"down": [self.down], "up": up}
