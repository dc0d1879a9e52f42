"""Build the optimizer named by `train.optimizer` from tagged param groups (see param_groups.py).

Choices the issue left open, and why:
- Prodigy and schedule-free AdamW keep *optimizer-wide* statistics (Prodigy's step-size estimate d,
  schedule-free's step counter and averaging weights) and Prodigy refuses different lrs across groups.
  The two experts are separate models that train in turns, so each expert gets its own inner optimizer
  (`PerExpertOptimizer`): an idle expert's statistics do not advance, and per-expert lrs work.
- AdamW, AdamW8bit and automagic skip parameters whose grad is None, so one optimizer holds all groups.
- Prodigy with LoRA+ (two lrs inside one expert) is refused: Prodigy cannot run groups at different lrs.
- adamw8bit is only built when bitsandbytes imports *and* a small step runs on the parameters' device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from cadence.config.cross_checks import (
    AUTOMAGIC_OFF_KEYS,
    EXPERT_LR_KEYS,
    OPTIMIZER_KEYS,
    automagic_param_issues,
    optimizer_param_issues,
)
from cadence.config.errors import ConfigError, format_path
from cadence.config.schema import TrainConfig

log = logging.getLogger(__name__)

PRODIGY_SMALL_LR = 0.1


def build_optimizer(train: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer for `groups` (from `build_param_groups`), configured from `train`."""
    if not groups or not any(g["params"] for g in groups):
        raise ValueError("build_optimizer: no trainable parameters (no LoRA modules were created)")
    if train.optimizer == "automagic":
        return _automagic(train, groups)
    kwargs = _checked_kwargs(train)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, **kwargs)
    if train.optimizer == "adamw8bit":
        return _adamw8bit(train, groups, kwargs)
    if train.optimizer == "prodigy":
        return _per_expert(groups, _prodigy_factory(train, groups, kwargs))
    if train.optimizer == "adamw_schedulefree":
        from schedulefree import AdamWScheduleFree

        opt = _per_expert(groups, lambda gs: AdamWScheduleFree(gs, lr=train.lr, **kwargs))
        opt.train()  # schedule-free must be in train mode for step(); see needs_train_eval_mode
        return opt
    raise ConfigError([("train.optimizer", f"unknown optimizer {train.optimizer!r}")])


def configured_optimizer_keys(optimizer: str) -> tuple[str, ...]:
    """Param-group settings that come from the config (restored from it, not the checkpoint, on resume)."""
    if optimizer == "automagic":
        from cadence.optim.automagic import OPTION_KEYS

        return tuple(k for k in OPTION_KEYS if k != "lr")  # lr: the start of its masks, handled as base lr
    return OPTIMIZER_KEYS.get(optimizer, ())


def _checked_kwargs(train: TrainConfig) -> dict[str, Any]:
    """optimizer_params minus the per-expert lrs, refused when the optimizer has no such option."""
    issues = optimizer_param_issues(train.optimizer, train.optimizer_params, OPTIMIZER_KEYS[train.optimizer])
    if issues:
        raise ConfigError([(format_path(loc), message) for loc, message in issues])
    params = {k: v for k, v in train.optimizer_params.items() if k not in EXPERT_LR_KEYS}
    if "betas" in params:
        params["betas"] = (float(params["betas"][0]), float(params["betas"][1]))
    return params


# ------------------------------------------------------------------------------------------ builders
def _automagic(train: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    from cadence.optim.automagic import Automagic, automagic_groups_from_params

    issues = automagic_param_issues(train.optimizer_params)  # the rules `cadence validate` applies
    if issues:
        raise ConfigError([(format_path(loc), message) for loc, message in issues])
    params = {k: v for k, v in train.optimizer_params.items() if k not in AUTOMAGIC_OFF_KEYS}
    try:
        merged = automagic_groups_from_params(params, groups)
        return Automagic(merged, lr=groups[0]["lr"])
    except ValueError as exc:
        raise ConfigError([("", str(exc))]) from exc


def _adamw8bit(
    train: TrainConfig, groups: list[dict[str, Any]], kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    device = next(p.device for g in groups for p in g["params"])
    hint = "set train.optimizer: adamw (same maths, full-precision state)"
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a broken CUDA setup raising at import
        raise ConfigError(
            [
                (
                    "train.optimizer",
                    f"adamw8bit needs bitsandbytes, which cannot be imported "
                    f"({type(exc).__name__}: {exc}); {hint}",
                )
            ]
        ) from exc
    if device.type != "cuda":
        raise ConfigError(
            [
                (
                    "train.optimizer",
                    f"adamw8bit runs on CUDA GPUs only, but the LoRA parameters are on {device}; {hint}",
                )
            ]
        )
    try:  # a real 8-bit step on the device: catches kernels missing for this GPU/bitsandbytes build
        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as exc:
        raise ConfigError(
            [
                (
                    "train.optimizer",
                    f"bitsandbytes AdamW8bit does not work on {device} ({type(exc).__name__}: {exc}); {hint}",
                )
            ]
        ) from exc
    return bnb.optim.AdamW8bit(groups, lr=train.lr, **kwargs)


def _prodigy_factory(train: TrainConfig, groups: list[dict[str, Any]], kwargs: dict[str, Any]) -> Callable:
    from prodigyopt import Prodigy

    if "lr" in train.model_fields_set and train.lr < PRODIGY_SMALL_LR:
        log.warning(
            "train.lr=%g with optimizer prodigy: Prodigy multiplies lr by its own step-size estimate and "
            "expects lr around 1.0, so steps will be ~%gx smaller than Prodigy intends. Remove train.lr "
            "(Cadence then uses 1.0) or set it to 1.0",
            train.lr,
            train.lr,
        )
    for expert in {g["expert"] for g in groups}:
        if len({g["lr"] for g in groups if g["expert"] == expert}) > 1:
            raise ConfigError(
                [
                    (
                        "network.network_kwargs.loraplus_lr_ratio",
                        "Prodigy runs all groups of a model at one lr, so LoRA+ cannot be used with "
                        "optimizer prodigy; remove loraplus_lr_ratio or use adamw",
                    )
                ]
            )
    return lambda gs: Prodigy(gs, lr=gs[0]["lr"], **kwargs)


def _per_expert(groups: list[dict[str, Any]], make: Callable[[list[dict]], torch.optim.Optimizer]):
    by_expert: dict[str, list[dict]] = {}
    for group in groups:
        by_expert.setdefault(group.get("expert", "main"), []).append(group)
    return PerExpertOptimizer({name: make(gs) for name, gs in by_expert.items()})


# ------------------------------------------------------------------------------------ composite
class PerExpertOptimizer(torch.optim.Optimizer):
    """One inner optimizer per expert behind the ordinary Optimizer interface.

    `param_groups` is the concatenation of the inner optimizers' groups (the same dict objects), so an
    LR scheduler scales them all; `step()` steps only inner optimizers that have gradients.
    `state` stays empty; per-parameter state lives in `inner[expert].state`.
    """

    def __init__(self, inner: dict[str, torch.optim.Optimizer]) -> None:
        self.inner = inner
        super().__init__([g for opt in inner.values() for g in opt.param_groups], {})
        self._sync_groups()

    def _sync_groups(self) -> None:
        self.param_groups = [g for opt in self.inner.values() for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.inner.values():
            if any(p.grad is not None for g in opt.param_groups for p in g["params"]):
                opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.inner.values():
            opt.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:
        """Schedule-free: switch parameters to the training point (no-op for other inner optimizers)."""
        for opt in self.inner.values():
            if hasattr(opt, "train"):
                opt.train()

    def eval(self) -> None:
        """Schedule-free: switch parameters to the averaged point used for sampling and saving."""
        for opt in self.inner.values():
            if hasattr(opt, "eval"):
                opt.eval()

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"per_expert": {name: opt.state_dict() for name, opt in self.inner.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        saved = state_dict.get("per_expert")
        if saved is None or set(saved) != set(self.inner):
            raise ValueError(
                f"optimizer state holds experts {sorted(saved or [])}, this run trains {sorted(self.inner)}; "
                "resume with the same model.model_kwargs.train_high_noise / train_low_noise"
            )
        for name, opt in self.inner.items():
            opt.load_state_dict(saved[name])
        self._sync_groups()


# ----------------------------------------------------------------------------------------- helpers
def needs_train_eval_mode(opt: torch.optim.Optimizer) -> bool:
    """True for schedule-free optimizers: call opt.train() before stepping and opt.eval() before
    sampling or saving weights, since the parameters hold a different point in each mode."""
    return any("train_mode" in group for group in opt.param_groups)


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Total L2 norm of the gradients (params without grad are skipped), clipped to max_norm when > 0.

    The norm is returned even with clipping off (max_norm = 0) for the metrics. A non-finite norm is
    returned as is without touching the gradients, so the caller can skip the step.
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    total = torch.nn.utils.get_total_norm([p.grad for p in with_grad], norm_type=2.0)
    value = float(total)
    if max_norm > 0 and math.isfinite(value):
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, total)
    return value
