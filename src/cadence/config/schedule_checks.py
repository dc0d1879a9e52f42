"""Rules for `train.lr_scheduler` and its `lr_scheduler_params`, shared by `cadence validate` (cross_checks)
and the scheduler builder (optim/schedulers.py), so a bad schedule is refused before any model loads.

Parameter names are the ones ai-toolkit passes on to torch's and diffusers' schedulers (`eta_min`, `T_0`,
`T_mult`, `step_size`, `gamma`, `num_warmup_steps`, `num_training_steps`, `lr_end`, `power`,
`start_factor`, `end_factor`), plus Cadence's relative floor `min_lr_ratio`.
"""

from __future__ import annotations

import math
from typing import Any

from cadence.config.compat import Parts
from cadence.config.errors import closest

Issue = tuple[Parts, str]

SCHEDULER_KEYS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "constant_with_warmup": ("num_warmup_steps",),
    # num_warmup_steps / cosine_decay_steps: newer ai-toolkit's cosine (warmup, then decay over that many
    # steps and hold the floor)
    "cosine": ("min_lr_ratio", "eta_min", "num_warmup_steps", "cosine_decay_steps"),
    "linear": ("min_lr_ratio", "eta_min", "start_factor", "end_factor"),
    "cosine_with_restarts": ("T_0", "T_mult", "eta_min", "min_lr_ratio"),
    "polynomial": ("num_warmup_steps", "num_training_steps", "lr_end", "power"),
    "step": ("step_size", "gamma"),
}
# ai-toolkit's default warmup for constant_with_warmup when none is given (it prints a warning too)
DEFAULT_CONSTANT_WARMUP = 1000
# what ai-toolkit's own keys mean there, for keys that Cadence takes from elsewhere
_TAKEN_ELSEWHERE = {
    "total_iters": "ai-toolkit replaces it with train.steps, and so does Cadence: remove it",
    "T_max": "ai-toolkit's cosine runs over train.steps (it sets T_max from it): remove it",
    "last_epoch": "the step is restored from the run folder on resume: remove it",
}
_PARAM = ("train", "lr_scheduler_params")


def resolved_warmup(kind: str, warmup_steps: int, params: dict[str, Any]) -> int:
    """Warmup length: the schedule's `num_warmup_steps`, else train.lr_warmup_steps; constant_with_warmup
    without either warms up over ai-toolkit's default 1000 steps."""
    if params.get("num_warmup_steps") is not None:
        return int(params["num_warmup_steps"])
    if kind == "constant_with_warmup" and not warmup_steps:
        return DEFAULT_CONSTANT_WARMUP
    return warmup_steps


def _number(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        return None
    return float(value)


def _range_issues(
    kind: str, params: dict[str, Any], warmup_steps: int, base_lrs: tuple[float, ...]
) -> list[Issue]:
    """Values each parameter must have (the ranges torch and diffusers enforce, checked before training)."""
    issues: list[Issue] = []

    def bad(key: str, text: str) -> None:
        issues.append(((*_PARAM, key), f"got {params[key]!r}; {text}"))

    def whole(key: str, low: int) -> None:
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            bad(key, f"must be a whole number >= {low}")

    whole("T_0", 1)
    whole("T_mult", 1)
    whole("step_size", 1)
    whole("num_training_steps", 1)
    whole("num_warmup_steps", 0)
    whole("cosine_decay_steps", 1)
    for key, low, high in (("min_lr_ratio", 0.0, 1.0), ("start_factor", 0.0, 1.0), ("end_factor", 0.0, 1.0)):
        value = _number(params, key)
        if key in params and (
            value is None or not low <= value <= high or (key == "start_factor" and value == 0)
        ):
            bad(key, f"must be in {'(0, 1]' if key == 'start_factor' else '[0, 1]'} (torch's range)")
    for key in ("gamma", "power"):
        if key in params and ((value := _number(params, key)) is None or value <= 0):
            bad(key, "must be a number > 0")
    for key in ("eta_min", "lr_end"):
        if key not in params:
            continue
        value = _number(params, key)
        if value is None or value < 0:
            bad(key, "must be a learning rate >= 0")
        elif base_lrs and value >= min(base_lrs):
            bad(key, f"must be below the learning rate of every group (lowest: {min(base_lrs):g})")
    if "min_lr_ratio" in params and "eta_min" in params:
        issues.append(((*_PARAM, "eta_min"), "min_lr_ratio and eta_min both set the floor; keep one"))
    training = params.get("num_training_steps")
    if isinstance(training, int) and not isinstance(training, bool):
        warmup = resolved_warmup(kind, warmup_steps, params)
        if training <= warmup:
            bad("num_training_steps", f"must be above the warmup ({warmup} steps)")
    return issues


def schedule_issues(
    kind: str,
    automagic: bool,
    total_steps: int,
    warmup_steps: int,
    params: dict[str, Any],
    base_lrs: tuple[float, ...] = (),
) -> list[Issue]:
    """train.lr_scheduler settings that cannot work: unknown params, ranges, warmup given twice, automagic's
    own schedule. `base_lrs` (every group's lr, when known) bound the absolute floors eta_min and lr_end."""
    if kind not in SCHEDULER_KEYS:
        return [
            (
                ("train", "lr_scheduler"),
                f"unknown scheduler {kind!r}; expected one of {', '.join(SCHEDULER_KEYS)}",
            )
        ]
    issues: list[Issue] = []
    if automagic and kind != "constant":
        issues.append(
            (
                ("train", "lr_scheduler"),
                f"{kind!r} cannot be used with optimizer automagic, which sets its own per-element learning "
                "rates; use lr_scheduler: constant",
            )
        )
    if automagic and warmup_steps:
        issues.append(
            (
                ("train", "lr_warmup_steps"),
                "automagic ramps its learning rates itself (from lr by lr_bump per step); set lr_warmup_steps: 0",
            )
        )
    accepted = SCHEDULER_KEYS[kind]
    for key in sorted(set(params) - set(accepted)):
        if key in _TAKEN_ELSEWHERE:
            issues.append(((*_PARAM, key), _TAKEN_ELSEWHERE[key]))
            continue
        owner = [k for k, keys in SCHEDULER_KEYS.items() if key in keys]
        close = closest(key, accepted)
        hint = (
            f"did you mean '{close}'? "
            if close
            else f"it belongs to lr_scheduler {' / '.join(owner)}; "
            if owner
            else ""
        )
        issues.append(
            (
                (*_PARAM, key),
                f"not an option of lr_scheduler {kind!r}; {hint}accepted: {', '.join(accepted) or 'none'}",
            )
        )
    if kind == "step" and "step_size" not in params:
        issues.append(
            (
                ("train", "lr_scheduler_params"),
                "lr_scheduler step needs step_size (steps between lr drops; torch StepLR), e.g. {step_size: 500}",
            )
        )
    given = params.get("num_warmup_steps")
    if given is not None and warmup_steps and given != warmup_steps:
        issues.append(
            (
                (*_PARAM, "num_warmup_steps"),
                f"is {given!r} but train.lr_warmup_steps is {warmup_steps}: both set the warmup; keep one",
            )
        )
    issues += _range_issues(kind, params, warmup_steps, base_lrs)
    if total_steps < 1 or warmup_steps < 0:
        issues.append(
            (
                ("train", "steps"),
                f"need steps >= 1 and lr_warmup_steps >= 0, got {total_steps}, {warmup_steps}",
            )
        )
    return issues
