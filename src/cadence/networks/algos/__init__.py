"""Adapter algorithms behind one interface (`AdapterModule`), chosen by `network.type`.

    lora, locon, dora -> LoRAModule (locon: Conv layers adapted too; dora: with weight decomposition)
    lokr              -> LoKrModule
    loha              -> LoHaModule
DoRA (`network_kwargs.dora_wd`, or type dora) adds the magnitude vector to any of them.
"""

from __future__ import annotations

import torch
from torch import nn

from cadence.config.schema import NetworkConfig
from cadence.networks.algos.base import AdapterModule
from cadence.networks.algos.loha import LoHaModule
from cadence.networks.algos.lokr import LoKrModule, lokr_split
from cadence.networks.algos.lora import LoRAModule
from cadence.networks.targeting import is_conv
from cadence.networks.tensors import AdapterTensors

MODULES: dict[str, type[AdapterModule]] = {"lora": LoRAModule, "lokr": LoKrModule, "loha": LoHaModule}

__all__ = [
    "MODULES",
    "AdapterModule",
    "LoHaModule",
    "LoKrModule",
    "LoRAModule",
    "build_adapter",
    "lokr_split",
]


def dora_axis(cfg: NetworkConfig) -> str | None:
    if not cfg.uses_dora:
        return None
    return "output" if cfg.network_kwargs.wd_on_output else "input"


def build_adapter(base: nn.Module, cfg: NetworkConfig, generator: torch.Generator) -> AdapterModule:
    """The configured algorithm on `base` (rank/alpha of its kind: Linear or Conv)."""
    conv = is_conv(base)
    rank = cfg.conv_rank if conv else cfg.linear
    alpha = cfg.resolved_conv_alpha if conv else cfg.resolved_linear_alpha
    assert rank is not None and alpha is not None  # targeting selects Conv layers only with a conv rank
    axis = dora_axis(cfg)
    if cfg.algo == "lokr":
        return LoKrModule(
            base, rank, alpha, generator, axis, factor=cfg.lokr_factor, full_rank=cfg.lokr_full_rank
        )
    return MODULES[cfg.algo](base, rank, alpha, generator, axis)


def adapter_from_tensors(base: nn.Module, t: AdapterTensors) -> AdapterModule:
    """A module shaped exactly as a file's tensors, holding them."""
    module = MODULES[t.algo].from_tensors(base, t)
    module.load(t)
    return module
