"""Attention backend selection for every expert, through diffusers' attention dispatcher.

`model.set_attention_backend` stores the backend on each attention processor (and checks the package is
importable), so the choice applies to both Wan 2.2 experts and survives `torch.compile`. SageAttention is
refused for training: its kernels have no backward pass. `cudnn` is PyTorch SDPA pinned to cuDNN's fused
attention, which needs no extra package and is the fastest built-in kernel on Hopper GPUs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

# config name -> diffusers AttentionBackendName value
BACKENDS = {"native": "native", "cudnn": "_native_cudnn", "flash": "flash", "flash3": "_flash_3"}
CUDA_ONLY = {"cudnn", "flash", "flash3"}
_INSTALL = {
    "flash": "install flash-attn 2 (`pip install flash-attn --no-build-isolation`, needs CUDA)",
    "flash3": "build FlashAttention 3 (hopper/) from source (needs an H100-class GPU)",
}


class AttentionBackendError(ValueError):
    """A backend that cannot train here; the message names train.attention_backend and what to do."""


def resolve_backend(name: str) -> str:
    """The diffusers backend name for `train.attention_backend`, or AttentionBackendError."""
    if name == "sage":
        raise AttentionBackendError(
            "train.attention_backend: 'sage' cannot train: SageAttention has no backward pass; "
            "use native (SDPA), cudnn, flash or flash3"
        )
    if name not in BACKENDS:
        raise AttentionBackendError(
            f"train.attention_backend: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}"
        )
    return BACKENDS[name]


def check_backend_device(backend: str, device: torch.device | str) -> None:
    """A CUDA-only backend on another device is an AttentionBackendError naming the key."""
    if backend in CUDA_ONLY and torch.device(device).type != "cuda":
        raise AttentionBackendError(
            f"train.attention_backend: {backend!r} runs only on CUDA GPUs and this run is on "
            f"{torch.device(device).type}; use native"
        )


def check_backend_package(backend: str) -> str:
    """The diffusers backend name, or AttentionBackendError when its package is missing here."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    value = resolve_backend(backend)
    try:
        _check_attention_backend_requirements(AttentionBackendName(value))
    except RuntimeError as exc:
        raise AttentionBackendError(
            f"train.attention_backend: {backend!r} is not usable here ({exc}); {_INSTALL.get(backend, '')} "
            "or use native"
        ) from exc
    return value


def apply_attention_backend(
    transformers: Iterable[nn.Module], backend: str, device: torch.device | str | None = None
) -> None:
    """Route every attention call of every transformer (all experts) through `backend` on `device`."""
    if device is not None:
        check_backend_device(backend, device)
    value = check_backend_package(backend)
    models = list(transformers)
    if value == "native" and all(attention_backends_of(m) <= {"native"} for m in models):
        # already diffusers' default (SDPA): setting it again only logs diffusers' "experimental" warning
        log.info("attention backend: native (PyTorch SDPA)")
        return
    for model in models:
        model.set_attention_backend(value)
    log.info("attention backend: %s", value)


def attention_backends_of(model: nn.Module) -> set[str]:
    """The backends the model's attention processors will use (None = dispatcher default, native)."""
    out: set[str] = set()
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            out.add("native" if backend is None else str(getattr(backend, "value", backend)))
    return out
