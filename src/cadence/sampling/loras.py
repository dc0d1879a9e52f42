"""Attach saved adapter files to loaded transformers through the same `LoRANetwork` hooks training uses.

The network is built from the file itself (exactly its modules, their algorithm, shapes and alphas), so a
file loads whatever filters and type trained it, and a sample from the file equals the in-training sample
of the same weights.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cadence.networks.formats import LoraFile, load_lora_file
from cadence.networks.lora import LoRANetwork


def attach_lora_file(
    transformer: nn.Module, path: str | Path, expert: str, lora: LoraFile | None = None
) -> tuple[LoRANetwork, LoraFile]:
    """Load `path` (or its already read `lora`) into a new network on `transformer` (hooks applied); alphas
    come from the file."""
    path = Path(path)
    lora = lora if lora is not None else load_lora_file(path)
    try:
        network = LoRANetwork.from_tensors(transformer, lora.modules, expert)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    network.eval()
    return network.apply(), lora


def lora_step(lora: LoraFile) -> int | None:
    """The training step recorded in a Cadence LoRA file's metadata, if any."""
    value = lora.metadata.get("step")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
