"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay.

One factor per optimizer step multiplies every group's base lr, so per-expert ratios (high_noise at 4x
low_noise) and LoRA+ ratios hold throughout. The scheduler counts optimizer steps of the whole run (both
experts), matching `train.steps`; call `scheduler.step()` once after each `optimizer.step()`.

Factor after s finished optimizer steps (w = warmup steps, T = total steps, m = min_lr_ratio):
- warmup, s < w: s / w (the diffusers/transformers convention: the first step runs at lr 0, which still
  initialises Adam's moments);
- constant: 1;
- cosine: m + (1 - m) * (1 + cos(pi * p)) / 2 with p = (s - w) / (T - w), clamped to [0, 1];
- linear: m + (1 - m) * (1 - p); m defaults to 0, so lr reaches 0 at s = T.

The factor function is a closure, so `state_dict()` stores only the step count and base lrs: resuming
with a longer `train.steps` stretches the decay to the new total instead of keeping the old one.

Automagic sets its own per-element lr (group lr is only its starting value), so only `constant` with no
warmup is accepted with it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from cadence.config.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("constant", "cosine", "linear")
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "cosine": ("min_lr_ratio",),
    "linear": ("min_lr_ratio",),
}


def lr_factor(
    kind: str, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """The multiplier of the base lr after `s` finished optimizer steps."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return s / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (s - warmup_steps) / max(1, total_steps - warmup_steps)))
        if kind == "cosine":
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)

    return factor


def _is_automagic(optimizer: torch.optim.Optimizer) -> bool:
    try:
        from cadence.optim.automagic import Automagic
    except ImportError:
        return False
    return isinstance(optimizer, Automagic)


def _check(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int, params: dict[str, Any]
) -> float:
    """Validate the schedule settings; returns min_lr_ratio."""
    if kind not in KINDS:
        raise ConfigError(
            [("train.lr_scheduler", f"unknown scheduler {kind!r}; expected one of {', '.join(KINDS)}")]
        )
    issues: list[tuple[str, str]] = []
    if _is_automagic(optimizer):
        if kind != "constant":
            issues.append(
                (
                    "train.lr_scheduler",
                    f"{kind!r} cannot be used with optimizer automagic, which sets "
                    "its own per-element learning rates; use lr_scheduler: constant",
                )
            )
        if warmup_steps:
            issues.append(
                (
                    "train.lr_warmup_steps",
                    "automagic ramps its learning rates itself (from lr by "
                    "lr_bump per step); set lr_warmup_steps: 0",
                )
            )
    for key in sorted(set(params) - set(PARAM_KEYS[kind])):
        accepted = ", ".join(PARAM_KEYS[kind]) or "none"
        issues.append(
            (
                f"train.lr_scheduler_params.{key}",
                f"not an option of lr_scheduler {kind!r}; accepted: {accepted}",
            )
        )
    min_lr_ratio = float(params.get("min_lr_ratio", 0.0))
    if not 0.0 <= min_lr_ratio <= 1.0:
        issues.append(("train.lr_scheduler_params.min_lr_ratio", f"must be in [0, 1], got {min_lr_ratio}"))
    if total_steps < 1 or warmup_steps < 0:
        issues.append(
            ("train.steps", f"need steps >= 1 and lr_warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        )
    if issues:
        raise ConfigError(issues)
    if warmup_steps >= total_steps:
        log.warning(
            "train.lr_warmup_steps=%d >= train.steps=%d: the run ends before warmup does",
            warmup_steps,
            total_steps,
        )
    return min_lr_ratio


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    warmup_steps: int,
    params: dict[str, Any] | None = None,
) -> LambdaLR:
    """A LambdaLR applying one warmup + decay factor to every param group's base lr."""
    min_lr_ratio = _check(optimizer, kind, total_steps, warmup_steps, dict(params or {}))
    return LambdaLR(optimizer, lr_factor(kind, total_steps, warmup_steps, min_lr_ratio))
