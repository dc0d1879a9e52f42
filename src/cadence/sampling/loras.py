"""Attach saved LoRA files to loaded transformers through the same `LoRANetwork` hooks training uses.

The network's targets and ranks are derived from the file itself (exactly its modules), so a file loads
whatever filters trained it, and a sample from the file equals the in-training sample of the same weights.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from cadence.config.schema import NetworkConfig, NetworkKwargs
from cadence.networks.formats import LoraFile, load_lora_file
from cadence.networks.lora import LoRANetwork
from cadence.networks.targeting import NAME_PREFIX


def _rank(lora: LoraFile, conv: bool, path: Path) -> int | None:
    ranks = {t.rank for t in lora.modules.values() if (t.down.dim() > 2) == conv}
    if len(ranks) > 1:
        raise ValueError(
            f"{path}: {'conv' if conv else 'Linear'} modules have different ranks {sorted(ranks)}; "
            "Cadence samples files with one rank per module kind"
        )
    return next(iter(ranks), None)


def network_config_for(lora: LoraFile, path: Path) -> NetworkConfig:
    """A NetworkConfig that targets exactly the file's modules with the file's ranks."""
    names = sorted(lora.modules)
    exact = [f"^{re.escape(NAME_PREFIX + n)}$" for n in names]
    alternatives = "|".join(re.escape(NAME_PREFIX + n) for n in names)
    return NetworkConfig(
        linear=_rank(lora, False, path) or 1,
        conv=_rank(lora, True, path),
        network_kwargs=NetworkKwargs(
            include_patterns=exact,  # adds modules outside the default block Linears
            exclude_patterns=[f"^(?!(?:{alternatives})$)"],  # drops every module the file does not have
        ),
    )


def attach_lora_file(
    transformer: nn.Module, path: str | Path, expert: str, lora: LoraFile | None = None
) -> tuple[LoRANetwork, LoraFile]:
    """Load `path` (or its already read `lora`) into a new network on `transformer` (hooks applied); alphas
    come from the file."""
    path = Path(path)
    lora = lora if lora is not None else load_lora_file(path)
    network = LoRANetwork(transformer, network_config_for(lora, path), name=expert)
    network.load_lora_tensors(lora.modules)
    network.eval()
    return network.apply(), lora


def lora_step(lora: LoraFile) -> int | None:
    """The training step recorded in a Cadence LoRA file's metadata, if any."""
    value = lora.metadata.get("step")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
