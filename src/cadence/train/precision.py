"""Device and dtype resolution from config strings."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


DEVICE_OVERRIDE_ENV = "CADENCE_DEVICE"


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit 'cuda' without a GPU is a clear error.

    CADENCE_DEVICE overrides the config's `device`: the UI sets it with CUDA_VISIBLE_DEVICES when it gives a
    job its GPU slot (that GPU is then cuda:0 inside the job) or runs the job on the CPU.
    """
    override = os.environ.get(DEVICE_OVERRIDE_ENV)
    if override and override != name:
        log.info("device %r from %s overrides the config's device %r", override, DEVICE_OVERRIDE_ENV, name)
        name = override
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {name!r} was asked for but no CUDA GPU is visible; use device: cpu or auto"
        )
    return device
