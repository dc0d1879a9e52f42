"""Optimizer param groups: one per trained expert (two with LoRA+), each at its expert's learning rate.

Motion LoRAs for Wan 2.2 want the high-noise expert at 3-4x the low-noise learning rate (seed 003), so
`train.optimizer_params.high_noise_lr` / `low_noise_lr` override `train.lr` per expert. Every group is tagged
with `expert` (which network it belongs to) and `name` (`<expert>` or `<expert>_up` for the LoRA+ up group)
so that metrics, the LR scheduler and automagic's per-expert bounds can find it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cadence.config.cross_checks import EXPERT_LR_KEYS
from cadence.config.errors import ConfigError
from cadence.config.schema import TrainConfig

if TYPE_CHECKING:
    from cadence.networks.lora import LoRANetwork

log = logging.getLogger(__name__)


# Start lr an optimizer wants when the user did not set train.lr: Prodigy estimates the step size itself
# and expects lr ~ 1.0; automagic starts tiny and grows its per-element lr (the seed's default 1e-6).
UNSET_LR_DEFAULTS = {"prodigy": 1.0, "automagic": 1e-6}


def base_lr(train: TrainConfig) -> float:
    """train.lr, or the chosen optimizer's natural default when the config never set train.lr."""
    if "lr" not in train.model_fields_set and train.optimizer in UNSET_LR_DEFAULTS:
        return UNSET_LR_DEFAULTS[train.optimizer]
    return train.lr


def expert_lr(train: TrainConfig, expert: str) -> float:
    """`optimizer_params.<expert>_lr` when given (high_noise_lr / low_noise_lr), else the base lr."""
    value = train.optimizer_params.get(f"{expert}_lr")
    if value is None:
        return base_lr(train)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(
            [(f"train.optimizer_params.{expert}_lr", f"must be a positive number, got {value!r}")]
        )
    return float(value)


def build_param_groups(
    networks: dict[str, LoRANetwork], train: TrainConfig, loraplus_lr_ratio: float | None
) -> list[dict[str, Any]]:
    """Groups for every expert's network, in the order of `networks` (model order: high_noise first)."""
    unused = [k for k in EXPERT_LR_KEYS if k in train.optimizer_params and k[: -len("_lr")] not in networks]
    if unused:
        log.warning(
            "train.optimizer_params.%s has no effect: this run trains %s",
            ", ".join(unused),
            ", ".join(networks),
        )
    groups: list[dict[str, Any]] = []
    for expert, network in networks.items():
        expert_groups = network.param_groups(expert_lr(train, expert), loraplus_lr_ratio)
        for index, group in enumerate(expert_groups):
            is_up = len(expert_groups) > 1 and (str(group.get("name", "")).endswith(".up") or index == 1)
            tagged = dict(group)
            tagged["params"] = list(group["params"])
            tagged["expert"] = expert
            tagged["name"] = f"{expert}_up" if is_up else expert
            groups.append(tagged)
    return groups
