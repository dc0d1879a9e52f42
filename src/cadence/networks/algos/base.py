"""The one adapter-module interface every algorithm implements (LoRA/LoCon, LoKr, LoHa; DoRA on any).

Shaped after LyCORIS's `LycorisBaseModule`: each algorithm names the file keys it writes, computes its
weight change and its bypass forward; DoRA is a flag that adds the magnitude `dora_scale`. What the rest
of Cadence calls:

* `delta(x, multiplier, dropout, rank_dropout)`: what the forward hook adds to the base layer's output
  (in x's dtype). Without DoRA this is the bypass form (no [out, in] matrix is built where the algorithm
  avoids it); with DoRA it is `op(x, W' - W)`, since the rescaled weight cannot be factored through x.
* `factor_delta()`: scale · ΔW of the factors (differentiable, fp32); `diff_weight()`: the real weight change
  W' - W (DoRA included), what |ΔW|, health and merging read.
* `export()` / `load()`: an `AdapterTensors(algo, tensors by key suffix, alpha)`; `param_roles()`: which
  parameters are "down" and "up" for LoRA+ (None where LoRA+ has no meaning).
* `alpha` is runtime state read at every forward: scale = alpha / rank, so alpha phases reach every type.

The base layer is referenced, never registered as a submodule, so the base model's tree and state dict stay
exactly as diffusers built them (see docs/design.md, "Own LoRA modules, not PEFT").
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cadence.networks.targeting import is_conv
from cadence.networks.tensors import DORA_KEY, AdapterTensors, dora_magnitude, dora_weight


def _no_rng() -> torch.Generator:
    """A private generator for modules about to be overwritten by a file's tensors: their throwaway
    initialisation must not draw from (and shift) torch's global RNG."""
    return torch.Generator().manual_seed(0)


class AdapterModule(nn.Module):
    """Common state of one adapted layer: shape, op, runtime alpha, optional DoRA magnitude."""

    algo: ClassVar[str]

    def __init__(self, base: nn.Module, alpha: float | None, dora_axis: str | None = None):
        """`dora_axis`: None (no DoRA), "output" (magnitude per output row) or "input" (per input column)."""
        super().__init__()
        self.alpha = None if alpha is None else float(alpha)
        self.is_conv = is_conv(base)
        # sizes from the module's attributes, not weight.shape: quantized Linears store packed weights
        if self.is_conv:
            if base.groups != 1:
                raise ValueError(
                    f"grouped convolutions are not supported as adapter targets (groups={base.groups})"
                )
            self.out_features, self.in_features = int(base.out_channels), int(base.in_channels)
            self.kernel = tuple(int(k) for k in base.kernel_size)
            self.conv_args = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation}
            self._op = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(self.kernel)]
        else:
            self.out_features, self.in_features = int(base.out_features), int(base.in_features)
            self.kernel = ()
            self.conv_args = {}
            self._op = F.linear
        self._base = (base,)  # a tuple: not registered, so never part of this module's state dict
        self.wd_on_output: bool | None = None
        if dora_axis is not None:
            self.wd_on_output = dora_axis == "output"
            self.dora_scale = nn.Parameter(dora_magnitude(self.base_weight(), self.wd_on_output))

    # ------------------------------------------------------------------------------------ common
    @property
    def device(self) -> torch.device:
        base = self._base[0].weight
        return base.device if base.device.type != "meta" else torch.device("cpu")

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features, *self.kernel)

    @property
    def rank(self) -> int | None:
        raise NotImplementedError

    @property
    def scale(self) -> float:
        """alpha / rank, read at every forward; 1 for an algorithm without a rank."""
        rank = self.rank
        return self.alpha / rank if rank and self.alpha is not None else 1.0

    @property
    def has_dora(self) -> bool:
        return self.wd_on_output is not None

    def base_weight(self) -> torch.Tensor:
        """The frozen base layer's weight as it is now (DoRA needs it; quantized bases are refused at config)."""
        return self._base[0].weight.detach()

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._op(x, weight, **self.conv_args) if self.is_conv else F.linear(x, weight)

    # ------------------------------------------------------------------------------- forward hook
    def delta(
        self, x: torch.Tensor, multiplier: float, dropout: float = 0.0, rank_dropout: float = 0.0
    ) -> torch.Tensor:
        """multiplier · (what this adapter adds to the base layer's output for input x), in x's dtype.
        Dropouts are given only in training (the network decides)."""
        if self.has_dora:
            # W' - W in fp32 (W' ≈ W: in bf16 the difference would lose most of its bits), then x's dtype
            base = self.base_weight().to(torch.float32)
            delta_w = dora_weight(base, self.factor_delta(), self.dora_scale, bool(self.wd_on_output)) - base
            return self.op(x, delta_w.to(x.dtype)) * multiplier
        return self.bypass(x, multiplier, dropout, rank_dropout)

    def bypass(self, x: torch.Tensor, multiplier: float, dropout: float, rank_dropout: float) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def output_dropouts(out: torch.Tensor, dropout: float, rank_dropout: float, conv: bool) -> torch.Tensor:
        """LyCORIS's dropouts for algorithms without rank features: elementwise on the delta, and rank dropout
        as one Bernoulli mask per sample and output channel (LyCORIS masks ΔW's rows), rescaled by 1/(1-p)."""
        if dropout > 0:
            out = F.dropout(out, p=dropout)
        if rank_dropout > 0:
            channels = out.shape[1] if conv else out.shape[-1]
            keep = (torch.rand(out.shape[0], channels, device=out.device) > rank_dropout).to(out.dtype)
            ones = [1] * (out.dim() - 2)
            mask = (
                keep.view(out.shape[0], channels, *ones) if conv else keep.view(out.shape[0], *ones, channels)
            )
            out = out * mask / (1.0 - rank_dropout)
        return out

    # ------------------------------------------------------------------------------------ weights
    def factor_delta(self) -> torch.Tensor:
        """scale · ΔW of the factors in fp32, shaped like the base weight (differentiable)."""
        raise NotImplementedError

    @torch.no_grad()
    def diff_weight(self) -> torch.Tensor:
        """The real weight change W' - W in fp32 (DoRA's rescaling included)."""
        return self.export(base=True).diff_weight()

    def factor_tensors(self) -> dict[str, torch.Tensor]:
        """{file key suffix: parameter} of the algorithm's factors (no DoRA magnitude)."""
        raise NotImplementedError

    def export(self, base: bool = False) -> AdapterTensors:
        """Detached copies of the tensors a file holds; `base=True` attaches the base weight (for DoRA's
        real delta; never saved)."""
        tensors = {k: v.detach().clone() for k, v in self.factor_tensors().items()}
        if self.has_dora:
            tensors[DORA_KEY] = self.dora_scale.detach().clone()
        alpha = self.alpha if self.rank else None
        return AdapterTensors(
            self.algo, tensors, alpha, self.base_weight() if base and self.has_dora else None
        )

    @torch.no_grad()
    def load(self, t: AdapterTensors, name: str = "") -> None:
        """Copy a file's tensors and alpha into this module; algorithm, keys and shapes must match."""
        where = f"{name}: " if name else ""
        if t.algo != self.algo:
            raise ValueError(f"{where}the file holds a {t.algo} adapter, this network trains {self.algo}")
        params = dict(self.factor_tensors())
        if self.has_dora:
            params[DORA_KEY] = self.dora_scale
        if set(params) != set(t.tensors):
            raise ValueError(
                f"{where}tensors {sorted(t.tensors)} in the file, the network has {sorted(params)} "
                "(a different LoKr factorization, rank or DoRA setting?)"
            )
        for key, param in params.items():
            value = t.tensors[key]
            if tuple(param.shape) != tuple(value.shape):
                raise ValueError(
                    f"{where}{key}: shape {tuple(value.shape)} in file, network has {tuple(param.shape)}"
                    " (different rank?)"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))
        if t.alpha is not None:
            self.alpha = float(t.alpha)

    def param_roles(self) -> dict[str, list[nn.Parameter]] | None:
        """{"down": [...], "up": [...]} for LoRA+ (the DoRA magnitude counts as "up", as PEFT's LoRA+ puts
        1-D parameters in its B group); None where LoRA+ is undefined."""
        return None

    def extra_repr(self) -> str:
        dora = f", dora={'output' if self.wd_on_output else 'input'}" if self.has_dora else ""
        return f"{self.algo}, shape={self.weight_shape}, rank={self.rank}, alpha={self.alpha}{dora}"
