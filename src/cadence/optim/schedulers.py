"""Learning-rate schedules: linear warmup, then constant, cosine or linear decay.

A factor per optimizer step multiplies each group's base lr. The decay counts optimizer steps of the whole
run (both experts), matching `train.steps`, so per-expert ratios (high_noise at 4x low_noise) and LoRA+
ratios hold once warmup is over; call `scheduler.step()` once after each `optimizer.step()`.

Factor after s finished optimizer steps (w = warmup steps, T = total steps, m = min_lr_ratio):
- warmup, while the group's expert has trained fewer than w of its own steps (e): e / w, the
  diffusers/transformers convention (the first step runs at lr 0, which still initialises Adam's moments).
  Experts take turns, so each gets its own warmup; the count assumes the run's current
  `switch_boundary_every` from step 1;
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

from cadence.config.cross_checks import schedule_issues
from cadence.config.errors import ConfigError, format_path

log = logging.getLogger(__name__)


def lr_factor(
    kind: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
    own_steps: Callable[[int], int] | None = None,
) -> Callable[[int], float]:
    """The multiplier of the base lr after `s` finished optimizer steps (of the whole run).

    `own_steps(s)` counts how many of those steps trained this group's expert: warmup ramps over the expert's
    own first steps, so with experts taking turns every expert gets its warmup, not only the first one. The
    decay follows the run's steps (both experts decay together)."""

    def decay(s: int) -> float:
        if kind == "constant" or s < warmup_steps:
            return 1.0
        progress = min(1.0, max(0.0, (s - warmup_steps) / max(1, total_steps - warmup_steps)))
        if kind == "cosine":
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)

    def factor(s: int) -> float:
        own = own_steps(s) if own_steps is not None else s
        return min(own / warmup_steps, decay(s)) if own < warmup_steps else decay(s)

    return factor


def turn_counter(experts: list[str], switch_every: int, expert: str) -> Callable[[int], int]:
    """Steps of `expert` among the run's first `s` steps, for experts taking turns of `switch_every` steps in
    `experts` order from step 1 (the router's rotation; skipped non-finite steps take their turn too)."""
    position, cycle = experts.index(expert), switch_every * len(experts)

    def count(s: int) -> int:
        cycles, rest = divmod(s, cycle)
        return cycles * switch_every + min(max(rest - position * switch_every, 0), switch_every)

    return count


def _is_automagic(optimizer: torch.optim.Optimizer) -> bool:
    try:
        from cadence.optim.automagic import Automagic
    except ImportError:
        return False
    return isinstance(optimizer, Automagic)


def _check(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int, params: dict[str, Any]
) -> float:
    """Validate the schedule settings (the same rules `cadence validate` applies); returns min_lr_ratio."""
    issues = schedule_issues(kind, _is_automagic(optimizer), total_steps, warmup_steps, params)
    if issues:
        raise ConfigError([(format_path(loc), message) for loc, message in issues])
    min_lr_ratio = float(params.get("min_lr_ratio", 0.0))
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
    rotation: tuple[list[str], int] | None = None,
) -> LambdaLR:
    """A LambdaLR applying warmup + decay to every param group's base lr. With `rotation` (the experts in
    turn order, steps per turn), a group tagged with an `expert` warms up over that expert's own steps."""
    min_lr_ratio = _check(optimizer, kind, total_steps, warmup_steps, dict(params or {}))
    factors = []
    for group in optimizer.param_groups:
        expert = group.get("expert")
        own = turn_counter(*rotation, expert) if rotation and expert in rotation[0] else None
        factors.append(lr_factor(kind, total_steps, warmup_steps, min_lr_ratio, own))
    return LambdaLR(optimizer, factors)


def keep_configured_settings(
    optimizer: torch.optim.Optimizer, scheduler: LambdaLR, load: Callable[[], None], keys: tuple[str, ...]
) -> list[str]:
    """Run `load` (restoring optimizer and scheduler state from a checkpoint), then put back what the config
    sets: each group's base lr (train.lr, per-expert lrs, LoRA+) and `keys` (train.optimizer_params).

    torch's load_state_dict restores hyperparameters with the state, so a resumed run would keep the old lr
    or max_lr while the log says the new config is used. Returns the settings that changed, in words."""
    configured = [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]
    base_lrs = list(scheduler.base_lrs)
    load()
    changes = []
    for index, (group, wanted, base) in enumerate(
        zip(optimizer.param_groups, configured, base_lrs, strict=True)
    ):
        name = group.get("name", index)
        for key, value in wanted.items():
            if group.get(key) != value:
                changes.append(f"{name}.{key} {group.get(key)} -> {value}")
                group[key] = value
        if scheduler.base_lrs[index] != base:
            changes.append(
                f"{name}.lr {scheduler.base_lrs[index]:g} -> {base:g} (before the schedule's factor)"
            )
        scheduler.base_lrs[index] = group["initial_lr"] = base
        group["lr"] = base * scheduler.lr_lambdas[index](scheduler.last_epoch)
    return changes
