"""`model.assistant_lora_path`: ai-toolkit's frozen "training adapter" for step-distilled models.

FLUX.1-schnell and Z-Image-Turbo are distilled to sample in a few steps; fine-tuning them directly erodes the
distillation. ai-toolkit's answer (`toolkit/assistant_lora.py`, `stable_diffusion_model.py`, 27a03a91) is an
adapter trained to undo the distillation: it is merged into the base for training and taken out again for
sampling (ai-toolkit samples with it at multiplier -1, which cancels the merge), so the trained LoRA learns on
the un-distilled model and is used on the distilled one. It reads the file as a diffusers-layout LoRA at scale
1 (alpha = rank, `.alpha` ignored); a folder means its `pytorch_lora_weights.safetensors`, and a name that is no
local path is a hub repo id whose `pytorch_lora_weights.safetensors` is fetched (or `owner/repo/file`).

Cadence does the same with a frozen hook-based network (base weights untouched, so quantization and block swap
are unaffected): on in training and evaluation, off inside `ModelAdapter.sampling_mode` (every sample, in
training and `cadence sample`). It is never written into the trained LoRA files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cadence.models.base import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_FILE = "pytorch_lora_weights.safetensors"


def resolve_training_adapter(spec: str) -> Path:
    """A local file, a folder's pytorch_lora_weights.safetensors, or a hub file (`owner/repo` or
    `owner/repo/file.safetensors`); errors say what to do."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / DEFAULT_FILE
    if path.is_file():
        return path
    parts = spec.strip("/").split("/")
    if path.is_absolute() or spec.startswith(".") or len(parts) < 2:
        raise ModelLoadError(
            f"model.assistant_lora_path: {path} is not a file (or a folder holding {DEFAULT_FILE})"
        )
    repo = "/".join(parts[:2])
    filename = "/".join(parts[2:]) or DEFAULT_FILE
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # offline, unknown repo, no access: one message that says what to do
        raise ModelLoadError(
            f"model.assistant_lora_path {spec!r} is not a local file and could not be fetched from the Hugging "
            f"Face Hub ({type(exc).__name__}); download it (`hf download {repo} {filename}`) and give its path"
        ) from exc


def attach_training_adapter(adapter, expert: str, path: Path) -> None:
    """Hook the adapter file onto `expert`'s transformer, frozen, at scale 1 (ai-toolkit's rule)."""
    from cadence.networks.formats import load_lora_file
    from cadence.networks.lora import LoRANetwork

    lora = load_lora_file(path)
    modules = {name: t.with_alpha(float(t.rank)) if t.rank else t for name, t in lora.modules.items()}
    try:
        net = LoRANetwork.from_tensors(adapter.transformer(expert), modules, f"{expert}_training_adapter")
    except ValueError as exc:
        raise ModelLoadError(f"model.assistant_lora_path {path}: {exc}") from exc
    net.to(device=adapter.device, dtype=adapter.dtype).requires_grad_(False).eval()
    net.apply()
    adapter.training_adapters[expert] = net
    log.info(
        "training adapter %s on %s: %d layers at scale 1, frozen; off while sampling",
        path.name,
        expert,
        len(modules),
    )


def attach_pending(adapter) -> None:
    """Attach the files the family noted at load (called once the base is quantized: quantizers may swap
    the Linear modules a hook sits on)."""
    pending = getattr(adapter, "pending_training_adapters", {})
    for expert, path in list(pending.items()):
        if expert not in adapter.training_adapters:
            with torch.no_grad():
                attach_training_adapter(adapter, expert, path)
    pending.clear()
