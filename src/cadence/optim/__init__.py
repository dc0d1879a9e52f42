"""Optimizers, LR schedules and per-expert param groups (automagic lives in automagic.py)."""

from cadence.optim.factory import PerExpertOptimizer, build_optimizer, clip_grad_norm, needs_train_eval_mode
from cadence.optim.param_groups import base_lr, build_param_groups, expert_lr
from cadence.optim.schedulers import build_lr_scheduler, lr_factor

__all__ = [
    "PerExpertOptimizer",
    "base_lr",
    "build_lr_scheduler",
    "build_optimizer",
    "build_param_groups",
    "clip_grad_norm",
    "expert_lr",
    "lr_factor",
    "needs_train_eval_mode",
]
