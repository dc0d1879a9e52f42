"""Learning-rate schedules: warmup, then one of ai-toolkit's schedules, as a factor of each group's lr.

A factor per optimizer step multiplies each group's base lr. The decay counts optimizer steps of the whole
run (both experts), matching `train.steps`, so per-expert ratios (high_noise at 4x low_noise) and LoRA+
ratios hold once warmup is over; call `scheduler.step()` once after each `optimizer.step()`.

Factor after s finished optimizer steps (w = warmup steps, T = total steps, p = (s - w) / (T - w) clamped to
[0, 1], m = the floor: `min_lr_ratio`, or an absolute `eta_min` / `lr_end` divided by the group's lr):
- warmup, while the group's expert has trained fewer than w of its own steps (e): e / w, the
  diffusers/transformers convention (the first step runs at lr 0, which still initialises Adam's moments).
  Experts take turns, so each gets its own warmup; the count assumes the run's current
  `switch_boundary_every` from step 1. w is `train.lr_warmup_steps`, or the schedule's own
  `num_warmup_steps` (constant_with_warmup, polynomial; diffusers' name). constant_with_warmup without
  either warms up over 1000 steps, ai-toolkit's default;
- constant / constant_with_warmup: 1 (torch ConstantLR at factor 1; diffusers' constant schedule with warmup);
- cosine: m + (1 - m) * (1 + cos(pi * p)) / 2 (torch CosineAnnealingLR over the run, eta_min = m * lr;
  `cosine_decay_steps` ends the decay after that many steps past the warmup and holds m);
- linear: m + (1 - m) * (1 - p), lr reaching m at s = T (diffusers' linear); with torch LinearLR's
  `start_factor` / `end_factor` (ai-toolkit passes them to LinearLR): start + (end - start) * p;
- cosine_with_restarts: torch CosineAnnealingWarmRestarts: cycles of `T_0` steps (default: the whole run,
  which is what ai-toolkit runs, as it overwrites T_0 with train.steps), each `T_mult` times longer than the
  one before, each a cosine from 1 to m;
- polynomial: diffusers' polynomial decay: m + (1 - m) * (1 - p)^power over `num_training_steps` (default T),
  then m; `lr_end` (default 1e-7) must be below every group's lr, as diffusers requires;
- step: torch StepLR: gamma^floor((s - w) / step_size).
The decays are re-derived rather than wrapped because torch's schedulers are stateful and diffusers'
lambdas read one optimizer-wide lr; tests compare every kind with torch's and diffusers' own schedulers.

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

from cadence.config.errors import ConfigError, format_path
from cadence.config.schedule_checks import resolved_warmup, schedule_issues

log = logging.getLogger(__name__)


def _floor(params: dict[str, Any], base_lr: float, absolute: str) -> float:
    """The decay floor as a factor: min_lr_ratio, or an absolute lr (eta_min / lr_end) over this group's lr."""
    if absolute in params:
        return float(params[absolute]) / base_lr if base_lr > 0 else 0.0
    return float(params.get("min_lr_ratio", 0.0))


def _restart_position(t: int, period: int, mult: int) -> tuple[int, int]:
    """(steps into the current cycle, cycle length) of CosineAnnealingWarmRestarts after t steps."""
    if mult == 1:
        return t % period, period
    while t >= period:
        t -= period
        period *= mult
    return t, period


def decay_factor(
    kind: str, total_steps: int, warmup_steps: int, params: dict[str, Any] | None = None, base_lr: float = 1.0
) -> Callable[[int], float]:
    """The schedule's factor after `s` finished optimizer steps of the run, without the warmup ramp."""
    params = dict(params or {})
    span = max(1, total_steps - warmup_steps)

    def progress(s: int, length: int = span) -> float:
        return min(1.0, max(0.0, (s - warmup_steps) / max(1, length)))

    if kind in ("constant", "constant_with_warmup"):
        return lambda s: 1.0
    if kind == "cosine":
        m = _floor(params, base_lr, "eta_min")
        length = int(params.get("cosine_decay_steps") or span)  # decay over that many steps, then the floor
        return lambda s: m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress(s, length)))
    if kind == "linear":
        if "start_factor" in params or "end_factor" in params:
            start, end = float(params.get("start_factor", 1.0 / 3.0)), float(params.get("end_factor", 1.0))
            return lambda s: start + (end - start) * progress(s)
        m = _floor(params, base_lr, "eta_min")
        return lambda s: m + (1.0 - m) * (1.0 - progress(s))
    if kind == "cosine_with_restarts":
        m = _floor(params, base_lr, "eta_min")
        period, mult = int(params.get("T_0", span)), int(params.get("T_mult", 1))

        def restarts(s: int) -> float:
            into, length = _restart_position(max(0, s - warmup_steps), period, mult)
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * into / length))

        return restarts
    if kind == "polynomial":
        m = float(params.get("lr_end", 1e-7)) / base_lr if base_lr > 0 else 0.0
        power = float(params.get("power", 1.0))
        length = int(params.get("num_training_steps", total_steps)) - warmup_steps
        return lambda s: m + (1.0 - m) * (1.0 - progress(s, length)) ** power
    if kind == "step":
        size, gamma = int(params["step_size"]), float(params.get("gamma", 0.1))
        return lambda s: gamma ** (max(0, s - warmup_steps) // size)
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def lr_factor(
    kind: str,
    total_steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.0,
    own_steps: Callable[[int], int] | None = None,
    params: dict[str, Any] | None = None,
    base_lr: float = 1.0,
) -> Callable[[int], float]:
    """The multiplier of the base lr after `s` finished optimizer steps (of the whole run).

    `own_steps(s)` counts how many of those steps trained this group's expert: warmup ramps over the expert's
    own first steps, so with experts taking turns every expert gets its warmup, not only the first one. The
    decay follows the run's steps (both experts decay together)."""
    merged = {"min_lr_ratio": min_lr_ratio, **(params or {})}
    decay = decay_factor(kind, total_steps, warmup_steps, merged, base_lr)

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
) -> int:
    """Validate the schedule settings (the same rules `cadence validate` applies); returns the warmup."""
    base_lrs = tuple(float(g["lr"]) for g in optimizer.param_groups)
    issues = schedule_issues(kind, _is_automagic(optimizer), total_steps, warmup_steps, params, base_lrs)
    if issues:
        raise ConfigError([(format_path(loc), message) for loc, message in issues])
    warmup = resolved_warmup(kind, warmup_steps, params)
    if kind == "constant_with_warmup" and warmup != warmup_steps and "num_warmup_steps" not in params:
        log.warning(
            "lr_scheduler constant_with_warmup without a warmup length warms up over %d steps, ai-toolkit's "
            "default; set train.lr_warmup_steps to choose",
            warmup,
        )
    if warmup >= total_steps:
        log.warning(
            "lr warmup of %d steps >= train.steps=%d: the run ends before warmup does", warmup, total_steps
        )
    return warmup


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
    params = dict(params or {})
    warmup = _check(optimizer, kind, total_steps, warmup_steps, params)
    schedule = {k: v for k, v in params.items() if k != "num_warmup_steps"}
    factors = []
    for group in optimizer.param_groups:
        expert = group.get("expert")
        own = turn_counter(*rotation, expert) if rotation and expert in rotation[0] else None
        factors.append(
            lr_factor(kind, total_steps, warmup, own_steps=own, params=schedule, base_lr=group["lr"])
        )
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
