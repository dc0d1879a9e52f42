"""LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank, a Hadamard product of two rank-r pairs (LyCORIS).

Twice LoRA's parameters at the same rank, and an effective rank up to r². The Hadamard product cannot be
pushed through x, so the bypass builds ΔW (LyCORIS's functional `bypass_forward_diff` does the same) and
runs the layer's op with it: each step costs one more base-sized matmul per adapted layer than LoRA.
Initialisation as LyCORIS's module: w1_b, w2_b ~ N(0, 1), w1_a ~ N(0, 0.1), w2_a = 0 (ΔW starts at zero).
Linear layers only in Cadence (Conv LoHa is refused at config).
"""

from __future__ import annotations

import torch
from torch import nn

from cadence.networks.algos.base import AdapterModule, _no_rng
from cadence.networks.tensors import AdapterTensors, lycoris


class LoHaModule(AdapterModule):
    algo = "loha"

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
        dora_axis: str | None = None,
    ):
        super().__init__(base, alpha, dora_axis)
        if self.is_conv:
            raise ValueError(
                "LoHa adapts Linear layers only in Cadence; use network.type locon for Conv layers"
            )
        self._rank = int(rank)
        out, inp, device = self.out_features, self.in_features, self.device
        w1_a, w1_b, w2_b = torch.empty(out, rank), torch.empty(rank, inp), torch.empty(rank, inp)
        nn.init.normal_(w1_b, std=1.0, generator=generator)
        nn.init.normal_(w1_a, std=0.1, generator=generator)
        nn.init.normal_(w2_b, std=1.0, generator=generator)
        self.hada_w1_a = nn.Parameter(w1_a.to(device))
        self.hada_w1_b = nn.Parameter(w1_b.to(device))
        self.hada_w2_a = nn.Parameter(torch.zeros(out, rank, device=device))
        self.hada_w2_b = nn.Parameter(w2_b.to(device))

    @classmethod
    def from_tensors(cls, base: nn.Module, t: AdapterTensors) -> LoHaModule:
        return cls(base, t.rank, t.alpha if t.alpha is not None else float(t.rank), _no_rng(), t.dora_axis)

    @property
    def rank(self) -> int:
        return self._rank

    def _weight(self, dtype: torch.dtype) -> torch.Tensor:
        f = [p.to(dtype) for p in (self.hada_w1_b, self.hada_w1_a, self.hada_w2_b, self.hada_w2_a)]
        gamma = torch.tensor(self.scale, dtype=dtype, device=f[0].device)
        return lycoris("loha").diff_weight(*f, None, None, gamma=gamma, backend="torch")

    def bypass(self, x: torch.Tensor, multiplier: float, dropout: float, rank_dropout: float) -> torch.Tensor:
        out = self.op(x, self._weight(x.dtype))
        return self.output_dropouts(out, dropout, rank_dropout, conv=False) * multiplier

    def factor_delta(self) -> torch.Tensor:
        return self._weight(torch.float32)

    def factor_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "hada_w1_a": self.hada_w1_a,
            "hada_w1_b": self.hada_w1_b,
            "hada_w2_a": self.hada_w2_a,
            "hada_w2_b": self.hada_w2_b,
        }
