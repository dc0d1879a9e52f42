"""LoRA adapters injected into a diffusers transformer with forward hooks.

Why our own modules and not PEFT: a forward hook on each targeted `nn.Linear`/`nn.Conv*` adds
`up(down(x)) * multiplier * alpha / rank` to the module's output, so the base model's module tree and state
dict stay exactly as diffusers built them (quantization, block swap and `torch.compile` act on the base model
unchanged), alpha is plain runtime state that the alpha-phase schedule can change between steps, and the two
Wan 2.2 experts simply get two independent `LoRANetwork`s - never one shared adapter.

Numerics (mixed precision): the LoRA parameters are fp32 masters whatever the base dtype; the hook computes
in the module input's dtype (bf16 when the base runs in bf16), casting the masters to it inside autograd so
their gradients arrive in fp32. Upcasting the activations instead would add an fp32 copy of every adapted
layer's input and fp32 matmuls to every step. Initialisation draws the down weights (kaiming-uniform,
a=sqrt(5), as nn.Linear does) from a `torch.Generator` seeded by the caller, up weights are zero, so the same
seed gives the same network. Dropout, rank dropout and module dropout are active only in training mode and
draw from torch's global RNG, which training-state resume restores, so a resumed run is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cadence.config.schema import NetworkConfig
from cadence.networks.formats import LoraTensors
from cadence.networks.targeting import is_conv, named_targets, select_targets


def _key(name: str) -> str:
    """ModuleDict keys may not contain '.'; diffusers names never contain '-'."""
    return name.replace(".", "-")


class LoRAModule(nn.Module):
    """The low-rank pair (fp32 `down`, `up`) for one base module plus its runtime `alpha`."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.is_conv = is_conv(base)
        # sizes from the module's attributes, not weight.shape: quantized Linears store packed weights
        if self.is_conv:
            kernel = tuple(base.kernel_size)
            down = torch.empty(self.rank, base.in_channels, *kernel)
            up = torch.zeros(base.out_channels, self.rank, *([1] * len(kernel)))
            if base.groups != 1:
                raise ValueError(
                    f"grouped convolutions are not supported as LoRA targets (groups={base.groups})"
                )
            self.conv_args = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation}
            self._conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
        else:
            down = torch.empty(self.rank, base.in_features)
            up = torch.zeros(base.out_features, self.rank)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        device = base.weight.device if base.weight.device.type != "meta" else torch.device("cpu")
        self.down = nn.Parameter(down.to(device))
        self.up = nn.Parameter(up.to(device))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down.to(x.dtype)
        if self.is_conv:
            return self._conv(x, down, **self.conv_args)
        return F.linear(x, down)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        up = self.up.to(h.dtype)
        return self._conv(h, up) if self.is_conv else F.linear(h, up)


class LoRANetwork(nn.Module):
    """All LoRA modules of one expert's transformer (`root`), keyed by diffusers module name.

    Dropouts follow this network's own `training` flag (nn.Module default: True), not the base model's:
    call `network.eval()` for sampling/evaluation and `network.train()` for training steps.
    """

    def __init__(
        self,
        root: nn.Module,
        cfg: NetworkConfig,
        *,
        name: str,
        seed: int = 0,
        only: Iterable[str] | None = None,
    ):
        """`only`: exactly these module names (a file's modules) instead of `cfg`'s target filters."""
        super().__init__()
        self.name = name
        self.multiplier = 1.0
        self.enabled = True
        self.dropout = float(cfg.dropout)
        self.rank_dropout = float(cfg.network_kwargs.rank_dropout)
        self.module_dropout = float(cfg.network_kwargs.module_dropout)
        generator = torch.Generator().manual_seed(int(seed))
        # plain dict: the base modules are not our submodules
        self._targets = select_targets(root, cfg) if only is None else named_targets(root, only)
        self.lora = nn.ModuleDict()
        conv_alpha = cfg.resolved_conv_alpha
        for mod_name, module in self._targets.items():
            if is_conv(module):
                self.lora[_key(mod_name)] = LoRAModule(module, cfg.conv, conv_alpha, generator)
            else:
                self.lora[_key(mod_name)] = LoRAModule(
                    module, cfg.linear, cfg.resolved_linear_alpha, generator
                )
        self.modules_by_name: dict[str, LoRAModule] = {n: self.lora[_key(n)] for n in self._targets}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------------------------------ hooks
    def apply(self, fn=None):  # noqa: A003 - the contract's name
        """Attach the forward hooks (idempotent). `apply(fn)` keeps nn.Module's meaning for callers that use it."""
        if fn is not None:
            return super().apply(fn)
        if not self._handles:
            for mod_name, module in self._targets.items():
                hook = self._hook(self.modules_by_name[mod_name])
                self._handles.append(module.register_forward_hook(hook))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def applied(self) -> bool:
        return bool(self._handles)

    def _hook(self, lora: LoRAModule):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled or self.multiplier == 0:
                return None
            delta = self._delta(lora, args[0])
            return None if delta is None else output + delta.to(output.dtype)

        return hook

    def _delta(self, lora: LoRAModule, x: torch.Tensor) -> torch.Tensor | None:
        """multiplier * alpha/rank * up(down(x)) in x's dtype, or None when module dropout skips it."""
        training = self.training
        if training and self.module_dropout > 0 and torch.rand(()) < self.module_dropout:
            return None
        h = lora.hidden(x)
        if training and self.dropout > 0:  # on the rank-r features, as kohya, ai-toolkit and musubi-tuner do
            h = F.dropout(h, p=self.dropout)
        scale = self.multiplier * lora.scale
        if training and self.rank_dropout > 0:
            # one Bernoulli mask per sample and rank; rank is dim 1 for conv, the last dim for Linear
            keep = (torch.rand(h.shape[0], lora.rank, device=h.device) > self.rank_dropout).to(h.dtype)
            ones = [1] * (h.dim() - 2)
            h = h * (
                keep.view(h.shape[0], lora.rank, *ones)
                if lora.is_conv
                else keep.view(h.shape[0], *ones, lora.rank)
            )
            scale = scale / (1.0 - self.rank_dropout)
        return lora.project(h) * scale

    # ------------------------------------------------------------------------------------------ alpha
    def _of_kind(self, conv: bool) -> Iterator[LoRAModule]:
        return (m for m in self.modules_by_name.values() if m.is_conv == conv)

    @property
    def has_linear(self) -> bool:
        return any(True for _ in self._of_kind(False))

    @property
    def has_conv(self) -> bool:
        return any(True for _ in self._of_kind(True))

    @property
    def linear_alpha(self) -> float | None:
        return next((m.alpha for m in self._of_kind(False)), None)

    @property
    def conv_alpha(self) -> float | None:
        return next((m.alpha for m in self._of_kind(True)), None)

    def set_alpha(self, linear: float | None = None, conv: float | None = None) -> None:
        """Change alpha at runtime; the next forward uses scale = alpha / rank."""
        for value, kind in ((linear, False), (conv, True)):
            if value is None:
                continue
            if value <= 0:
                raise ValueError(f"alpha must be > 0, got {value}")
            for module in self._of_kind(kind):
                module.alpha = float(value)

    # ------------------------------------------------------------------------------------ optimizer
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules_by_name.values() for p in (m.down, m.up)]

    def param_groups(self, lr: float, loraplus_lr_ratio: float | None = None) -> list[dict]:
        """One group at `lr`, or (LoRA+) down params at `lr` and up params at `lr * ratio`."""
        if not loraplus_lr_ratio:
            return [{"name": self.name, "params": self.trainable_parameters(), "lr": lr}]
        mods = list(self.modules_by_name.values())
        return [
            {"name": f"{self.name}.down", "params": [m.down for m in mods], "lr": lr},
            {"name": f"{self.name}.up", "params": [m.up for m in mods], "lr": lr * loraplus_lr_ratio},
        ]

    # ---------------------------------------------------------------------------------------- files
    def to_lora_tensors(self) -> dict[str, LoraTensors]:
        return {
            n: LoraTensors(down=m.down.detach().clone(), up=m.up.detach().clone(), alpha=m.alpha)
            for n, m in self.modules_by_name.items()
        }

    def load_lora_tensors(self, tensors: dict[str, LoraTensors]) -> None:
        """Copy weights and alphas from a file's modules; the module sets and shapes must match exactly."""
        missing = sorted(set(self.modules_by_name) - set(tensors))
        extra = sorted(set(tensors) - set(self.modules_by_name))
        if missing or extra:
            raise ValueError(
                f"LoRA modules do not match network {self.name!r}: missing {missing[:5]}, unexpected {extra[:5]}"
                " - was the file trained with the same target filters and model?"
            )
        with torch.no_grad():
            for n, module in self.modules_by_name.items():
                t = tensors[n]
                for param, value, what in ((module.down, t.down, "down"), (module.up, t.up, "up")):
                    if tuple(param.shape) != tuple(value.shape):
                        raise ValueError(
                            f"{n}.{what}: shape {tuple(value.shape)} in file, network has {tuple(param.shape)}"
                            " (different rank?)"
                        )
                    param.copy_(value.to(device=param.device, dtype=param.dtype))
                module.alpha = float(t.alpha)
