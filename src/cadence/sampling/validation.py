"""Checks that make a bad sample setting fail before training starts, never at the first sample step.

`JobConfig` already refuses unreadable control images when sampling is on (config load). This module adds
what needs the model's geometry or the machine: frame sizes must be multiples of the model's spatial
multiple, and `attention_backend: sage` needs CUDA and the `sageattention` package.
"""

from __future__ import annotations

import importlib.util

import torch

from cadence.config.schema import JobConfig, ctrl_img_problem
from cadence.models.registry import arch_spec


def attention_unavailable(backend: str) -> str | None:
    """Why `backend` cannot be used for sampling on this machine, or None when it can."""
    if backend == "native":
        return None
    if backend != "sage":
        return f"unknown attention backend {backend!r}; use native or sage"
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA device")
    if importlib.util.find_spec("sageattention") is None:
        reasons.append("the sageattention package is not installed (pip install sageattention)")
    if reasons:
        return f"sage is unavailable here: {'; '.join(reasons)}. Set sample.attention_backend: native"
    return None


def _item_path(cfg: JobConfig, index: int, key: str) -> str:
    n = len(cfg.sample.samples)
    return f"sample.samples[{index}].{key}" if index < n else f"sample.prompts[{index - n}]"


def validate_samples(
    cfg: JobConfig, require_enabled: bool = True, machine: bool = True
) -> list[tuple[str, str]]:
    """(dotted path, message) for every sample setting that cannot run; [] when sampling is fine or off.

    `require_enabled=False` checks even with train.disable_sampling (used by `cadence sample`);
    `machine=False` leaves out what depends on this machine (the attention backend's GPU and package).
    """
    if require_enabled and cfg.train.disable_sampling:
        return []
    issues: list[tuple[str, str]] = []
    sample = cfg.sample
    problem = attention_unavailable(sample.attention_backend) if machine else None
    if problem and sample.items:
        issues.append(("sample.attention_backend", problem))
    spec = arch_spec(cfg.model.arch)
    multiple = spec.spatial_multiple
    for key in ("width", "height"):
        value = getattr(sample, key)
        if value % multiple:
            issues.append((f"sample.{key}", _size_message(value, multiple, cfg.model.arch)))
    required = spec.i2v == "always"
    for i, item in enumerate(sample.items):
        for key in ("width", "height"):
            value = getattr(item, key)
            if value is not None and value % multiple:
                issues.append((_item_path(cfg, i, key), _size_message(value, multiple, cfg.model.arch)))
        if item.ctrl_img is not None or required:
            bad = ctrl_img_problem(item.ctrl_img)
            if bad:
                issues.append((_item_path(cfg, i, "ctrl_img"), bad))
    return issues


def _size_message(value: int, multiple: int, arch: str) -> str:
    lower = max(multiple, value // multiple * multiple)
    return f"got {value}; must be a multiple of {multiple} for {arch}; try {lower} or {lower + multiple}"
