"""LoKr: ΔW = kron(w1, w2) · scale, the Kronecker product of a small and a large factor (LyCORIS's LoKr).

A Linear of size out × in is split as out = a·b, in = c·d by LyCORIS's `factorization(dim, factor)`
(`lokr_factor`: -1 picks the split nearest the square root; a positive factor must divide both sizes).
`w1` [a, c] is always a full matrix. `w2` [b, d] is a full matrix with `lokr_full_rank: true` (ostris'
ai-toolkit's default; the seed fork's and Cadence's is false) or when the rank is at least half of max(b, d) (LyCORIS's rule), else `w2_a @ w2_b` of rank
`linear`. Scale = alpha / rank for a low-rank `w2`, 1 when both halves are full (LyCORIS forces alpha to
the rank there, and ComfyUI ignores alpha: a full-matrix LoKr has no alpha to schedule). Initialisation as
LyCORIS: w1, w2_a kaiming-uniform, w2 / w2_b zero. Linear layers only (Conv LoKr is refused at config: ComfyUI
cannot rebuild a full-matrix Conv3d Kronecker product).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch import nn

from cadence.networks.algos.base import AdapterModule, _no_rng
from cadence.networks.tensors import AdapterTensors, lycoris

log = logging.getLogger(__name__)


@functools.cache
def _warn_full_factor(rank: int, b: int, d: int, out: int, inp: int) -> None:
    """Once per shape (LyCORIS warns once too): a 14B model has hundreds of layers of a few shapes."""
    log.warning(
        "LoKr rank %d is at least half of the %dx%d Kronecker factor of %dx%d layers: that factor is a full "
        "matrix there (scale 1, alpha unused), as LyCORIS does",
        rank,
        b,
        d,
        out,
        inp,
    )


def lokr_split(dim: int, factor: int) -> tuple[int, int]:
    """(small, large) with small·large = dim, as LyCORIS's `factorization` (a positive factor must divide)."""
    if factor > 0 and dim % factor != 0:
        raise ValueError(f"lokr_factor {factor} does not divide the layer size {dim}")
    return lycoris("general").factorization(dim, factor)


class LoKrModule(AdapterModule):
    algo = "lokr"

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None,
        generator: torch.Generator | None = None,
        dora_axis: str | None = None,
        *,
        factor: int = -1,
        full_rank: bool = True,
        split: tuple[int, int, int, int] | None = None,
    ):
        """`split` (a, b, c, d) instead of `factor` rebuilds a file's exact factor shapes."""
        super().__init__(base, alpha, dora_axis)
        if self.is_conv:
            raise ValueError(
                "LoKr adapts Linear layers only in Cadence; use network.type locon for Conv layers"
            )
        if split is None:
            a, b = lokr_split(self.out_features, factor)
            c, d = lokr_split(self.in_features, factor)
        else:
            a, b, c, d = split
        low_rank = not full_rank and rank < max(b, d) / 2
        if not full_rank and not low_rank:
            _warn_full_factor(rank, b, d, self.out_features, self.in_features)
        device = self.device
        self._rank = int(rank) if low_rank else None
        if low_rank:
            w2_a = torch.empty(b, self._rank)
            nn.init.kaiming_uniform_(w2_a, a=math.sqrt(5), generator=generator)
            self.lokr_w2_a = nn.Parameter(w2_a.to(device))
            self.lokr_w2_b = nn.Parameter(torch.zeros(self._rank, d, device=device))
        else:
            self.lokr_w2 = nn.Parameter(torch.zeros(b, d, device=device))
        w1 = torch.empty(a, c)
        nn.init.kaiming_uniform_(w1, a=math.sqrt(5), generator=generator)
        self.lokr_w1 = nn.Parameter(w1.to(device))
        if self._rank is None:
            self.alpha = None

    @classmethod
    def from_tensors(cls, base: nn.Module, t: AdapterTensors) -> LoKrModule:
        w1 = t.tensors["lokr_w1"]
        if "lokr_w2" in t.tensors:
            b, d = t.tensors["lokr_w2"].shape
            rank, full = 1, True
        else:
            b, d = t.tensors["lokr_w2_a"].shape[0], t.tensors["lokr_w2_b"].shape[1]
            rank, full = int(t.tensors["lokr_w2_b"].shape[0]), False
        split = (int(w1.shape[0]), int(b), int(w1.shape[1]), int(d))
        alpha = t.alpha if t.alpha is not None else float(rank)
        return cls(base, rank, alpha, _no_rng(), t.dora_axis, full_rank=full, split=split)

    @property
    def rank(self) -> int | None:
        return self._rank

    @property
    def factors(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if self._rank is None:
            return self.lokr_w1, self.lokr_w2, None, None
        return self.lokr_w1, None, self.lokr_w2_a, self.lokr_w2_b

    def bypass(self, x: torch.Tensor, multiplier: float, dropout: float, rank_dropout: float) -> torch.Tensor:
        w1, w2, w2a, w2b = (None if f is None else f.to(x.dtype) for f in self.factors)
        # LyCORIS's grouped bypass: y = vec(w1 · unvec(x) · w2ᵀ), never building the out × in matrix
        out = lycoris("lokr").kron_bypass(
            x, w1, None, None, w2, w2a, w2b, None, scale=self.scale, backend="torch"
        )
        return self.output_dropouts(out, dropout, rank_dropout, conv=False) * multiplier

    def factor_delta(self) -> torch.Tensor:
        w1, w2, w2a, w2b = (None if f is None else f.to(torch.float32) for f in self.factors)
        return lycoris("lokr").kron_weight(
            w1, None, None, w2, w2a, w2b, None, scale=self.scale, backend="torch"
        )

    def factor_tensors(self) -> dict[str, torch.Tensor]:
        if self._rank is None:
            return {"lokr_w1": self.lokr_w1, "lokr_w2": self.lokr_w2}
        return {"lokr_w1": self.lokr_w1, "lokr_w2_a": self.lokr_w2_a, "lokr_w2_b": self.lokr_w2_b}
