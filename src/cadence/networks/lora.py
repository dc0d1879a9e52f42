"""Adapter networks injected into a diffusers transformer with forward hooks (one network per expert).

Why our own modules and not PEFT: a forward hook on each targeted `nn.Linear`/`nn.Conv*` adds the adapter's
delta (LoRA: `up(down(x)) * multiplier * alpha / rank`; LoKr, LoHa, DoRA: see `cadence.networks.algos`) to
the module's output, so the base model's module tree and state dict stay exactly as diffusers built them
(quantization, block swap and `torch.compile` act on the base model unchanged), alpha is plain runtime state
that the alpha-phase schedule can change between steps, and the two Wan 2.2 experts simply get two
independent networks - never one shared adapter.

Initialisation draws from a `torch.Generator` seeded by the caller, so the same seed gives the same network.
Dropout, rank dropout and module dropout are active only in training mode and draw from torch's global RNG,
which training-state resume restores, so a resumed run is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from cadence.config.schema import NetworkConfig
from cadence.networks.algos import AdapterModule, LoRAModule, adapter_from_tensors, build_adapter
from cadence.networks.targeting import named_targets, select_targets
from cadence.networks.tensors import AdapterTensors

__all__ = ["LoRAModule", "LoRANetwork"]


def _key(name: str) -> str:
    """ModuleDict keys may not contain '.'; diffusers names never contain '-'."""
    return name.replace(".", "-")


def _per_sample(multiplier: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A [B] multiplier shaped to scale each sample's delta (the output has x's leading dim and rank). A
    leading dim of B*k holds each sample's k rows together (Wan's per-token timesteps, flattened)."""
    if not isinstance(multiplier, torch.Tensor):
        return multiplier
    rows, samples = x.shape[0], multiplier.shape[0]
    if multiplier.dim() != 1 or rows % samples:
        raise ValueError(
            f"per-sample multipliers of shape {tuple(multiplier.shape)} for an input of {rows} rows"
        )
    if rows != samples:
        multiplier = multiplier.repeat_interleave(rows // samples)
    return multiplier.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


class LoRANetwork(nn.Module):
    """All adapter modules of one expert's transformer (`root`), keyed by diffusers module name.

    Dropouts follow this network's own `training` flag (nn.Module default: True), not the base model's:
    call `network.eval()` for sampling/evaluation and `network.train()` for training steps.
    """

    def __init__(
        self,
        root: nn.Module,
        cfg: NetworkConfig | None,
        *,
        name: str,
        seed: int = 0,
        only: Iterable[str] | None = None,
        tensors: dict[str, AdapterTensors] | None = None,
    ):
        """`only`: exactly these module names instead of `cfg`'s target filters. `tensors`: build the modules
        from a file's tensors (their algorithm, shapes and alphas; `cfg` may then be None: no dropout)."""
        super().__init__()
        self.name = name
        self.multiplier: float | torch.Tensor = 1.0  # a [B] tensor: per sample (datasets[].network_weight)
        self.enabled = True
        self.dropout = float(cfg.dropout) if cfg else 0.0
        self.rank_dropout = float(cfg.network_kwargs.rank_dropout) if cfg else 0.0
        self.module_dropout = float(cfg.network_kwargs.module_dropout) if cfg else 0.0
        generator = torch.Generator().manual_seed(int(seed))
        # plain dict: the base modules are not our submodules
        if tensors is not None:
            self._targets = named_targets(root, tensors)
        elif only is not None:
            self._targets = named_targets(root, only)
        else:
            assert cfg is not None
            self._targets = select_targets(root, cfg)
        self.lora = nn.ModuleDict()
        for mod_name, module in self._targets.items():
            if tensors is not None:
                self.lora[_key(mod_name)] = adapter_from_tensors(module, tensors[mod_name])
            else:
                assert cfg is not None
                self.lora[_key(mod_name)] = build_adapter(module, cfg, generator)
        self.modules_by_name: dict[str, AdapterModule] = {n: self.lora[_key(n)] for n in self._targets}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def from_tensors(cls, root: nn.Module, tensors: dict[str, AdapterTensors], name: str) -> LoRANetwork:
        """A network holding exactly a file's modules (any algorithm), hooks not yet applied."""
        return cls(root, None, name=name, tensors=tensors)

    @property
    def algos(self) -> set[str]:
        return {m.algo for m in self.modules_by_name.values()}

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

    def _hook(self, adapter: AdapterModule):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self.enabled or (not isinstance(self.multiplier, torch.Tensor) and self.multiplier == 0):
                return None
            delta = self._delta(adapter, args[0])
            return None if delta is None else output + delta.to(output.dtype)

        return hook

    def _delta(self, adapter: AdapterModule, x: torch.Tensor) -> torch.Tensor | None:
        """The adapter's output delta at this network's multiplier, or None when module dropout skips it."""
        multiplier = _per_sample(self.multiplier, x)
        if not self.training:
            return adapter.delta(x, multiplier)
        if self.module_dropout > 0 and torch.rand(()) < self.module_dropout:
            return None
        return adapter.delta(x, multiplier, self.dropout, self.rank_dropout)

    # ------------------------------------------------------------------------------------------ alpha
    def _of_kind(self, conv: bool) -> Iterator[AdapterModule]:
        return (m for m in self.modules_by_name.values() if m.is_conv == conv)

    @property
    def has_linear(self) -> bool:
        return any(True for _ in self._of_kind(False))

    @property
    def has_conv(self) -> bool:
        return any(True for _ in self._of_kind(True))

    @property
    def scaled_kinds(self) -> set[str]:
        """ "linear"/"conv" where some module has a rank, so that alpha changes its strength."""
        return {"conv" if m.is_conv else "linear" for m in self.modules_by_name.values() if m.rank}

    @property
    def linear_alpha(self) -> float | None:
        return next((m.alpha for m in self._of_kind(False) if m.alpha is not None), None)

    @property
    def conv_alpha(self) -> float | None:
        return next((m.alpha for m in self._of_kind(True) if m.alpha is not None), None)

    def set_alpha(self, linear: float | None = None, conv: float | None = None) -> None:
        """Change alpha at runtime; the next forward uses scale = alpha / rank (modules without a rank,
        e.g. a full-matrix LoKr, have no alpha and keep scale 1)."""
        for value, kind in ((linear, False), (conv, True)):
            if value is None:
                continue
            if value <= 0:
                raise ValueError(f"alpha must be > 0, got {value}")
            for module in self._of_kind(kind):
                if module.rank:
                    module.alpha = float(value)

    # ------------------------------------------------------------------------------------ optimizer
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules_by_name.values() for p in m.parameters()]

    def param_groups(self, lr: float, loraplus_lr_ratio: float | None = None) -> list[dict]:
        """One group at `lr`, or (LoRA+) down params at `lr` and up params at `lr * ratio`."""
        if not loraplus_lr_ratio:
            return [{"name": self.name, "params": self.trainable_parameters(), "lr": lr}]
        roles = [m.param_roles() for m in self.modules_by_name.values()]
        if any(r is None for r in roles):
            raise ValueError(
                f"LoRA+ (loraplus_lr_ratio) is defined for LoRA's up/down pair only; network {self.name!r} "
                f"trains {', '.join(sorted(self.algos))}"
            )
        return [
            {"name": f"{self.name}.down", "params": [p for r in roles for p in r["down"]], "lr": lr},
            {
                "name": f"{self.name}.up",
                "params": [p for r in roles for p in r["up"]],
                "lr": lr * loraplus_lr_ratio,
            },
        ]

    # ---------------------------------------------------------------------------------------- files
    def to_lora_tensors(self) -> dict[str, AdapterTensors]:
        """What a file of this network holds, per module (DoRA modules carry a reference to their base weight,
        so |ΔW| of the result includes the magnitude rescaling; it is never saved)."""
        return {n: m.export(base=True) for n, m in self.modules_by_name.items()}

    def load_lora_tensors(self, tensors: dict[str, AdapterTensors]) -> None:
        """Copy weights and alphas from a file's modules; the module sets and shapes must match exactly."""
        missing = sorted(set(self.modules_by_name) - set(tensors))
        extra = sorted(set(tensors) - set(self.modules_by_name))
        if missing or extra:
            raise ValueError(
                f"adapter modules do not match network {self.name!r}: missing {missing[:5]}, unexpected "
                f"{extra[:5]} - was the file trained with the same target filters and model?"
            )
        for n, module in self.modules_by_name.items():
            module.load(tensors[n], n)
