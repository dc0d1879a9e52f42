"""Finite checks of adapter tensors in the dtype they are written in.

A LoRA file is saved in `save.dtype` (fp16 by default), whose range ends at 65504: weights that are finite
in fp32 can overflow to inf on the cast. A file with inf/NaN loads as a broken LoRA in every tool, and a
training state with them resumes a broken run, so neither is ever written; the run stops instead, naming
the newest checkpoint that is still good.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> list[str]:
    """Names of the tensors that hold inf/NaN once cast to `dtype` (their own dtype when None)."""
    bad = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        value = tensor.detach()
        if dtype is not None and value.dtype != dtype:
            value = value.to(dtype)
        if not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def describe_nonfinite(names: list[str], where: str) -> str:
    """'3 tensors of high_noise (e.g. blocks.0.attn1.to_q.up) hold inf/NaN in fp16'."""
    example = ", ".join(sorted(names)[:2])
    return f"{len(names)} tensor(s) of {where} (e.g. {example})"
