"""Weight magnitudes of LoRA adapters: the effective update ΔW = up @ down · alpha / rank.

"Weight magnitude" everywhere in Cadence (metrics, analyze, inspect, UI) means the mean over modules of
mean |ΔW| — each module counts once, whatever its size, so a run with wide FFN layers and narrow attention
layers is not dominated by the FFN. This is the number the seed-003 practitioner compared between the
high- and low-noise experts by hand.

The maths is exact: ΔW is materialised in fp32, but in row chunks, so even a 5120×13824 FFN update never
holds more than `_CHUNK_ELEMENTS` floats at once. Conv kernels are flattened to [out, in·k…] (the LoRA
`up` of a conv is a 1×1 kernel), which gives the same |ΔW| elements as the reshaped kernel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

# Max ΔW elements materialised at once by mean_abs_delta (fp32: 64 MiB).
_CHUNK_ELEMENTS = 16 * 1024 * 1024
_BLOCK_RE = re.compile(r"(?:^|[._])blocks\.(\d+)(?:\.|$)")


class LoraTensorsLike(Protocol):
    """What magnitude needs from `cadence.networks.formats.LoraTensors` (kept structural on purpose)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float


@dataclass(frozen=True)
class MagnitudeSummary:
    """mean = mean over modules of mean |ΔW|; per_block/per_module use the same per-module numbers."""

    mean: float
    per_block: dict[int, float] = field(default_factory=dict)
    per_module: dict[str, float] = field(default_factory=dict)


def _factors(t: LoraTensorsLike) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up [out, rank], down [rank, in·k…], scale) in fp32, validated."""
    down = t.down.detach().to(torch.float32)
    up = t.up.detach().to(torch.float32)
    rank = down.shape[0]
    if up.dim() > 2 and any(s != 1 for s in up.shape[2:]):
        raise ValueError(f"LoRA up kernel {tuple(up.shape)} is not 1x1; expected [out, rank, 1, ...]")
    up2 = up.reshape(up.shape[0], -1)
    down2 = down.reshape(rank, -1)
    if up2.shape[1] != rank:
        raise ValueError(
            f"LoRA up {tuple(up.shape)} and down {tuple(down.shape)} disagree on rank "
            f"(up.shape[1]={up2.shape[1]}, down.shape[0]={rank})"
        )
    return up2, down2, float(t.alpha) / rank


def delta_weight(t: LoraTensorsLike) -> torch.Tensor:
    """ΔW = up @ down · alpha / rank in fp32, shaped like the base weight ([out, in] or [out, in, k…])."""
    up, down, scale = _factors(t)
    delta = (up @ down) * scale
    if t.down.dim() > 2:
        return delta.reshape(up.shape[0], *t.down.shape[1:])
    return delta


def mean_abs_delta(t: LoraTensorsLike) -> float:
    """mean |ΔW| of one module, exact, computed in row chunks to bound memory."""
    up, down, scale = _factors(t)
    rows = max(1, _CHUNK_ELEMENTS // max(1, down.shape[1]))
    total = 0.0
    for start in range(0, up.shape[0], rows):
        total += float((up[start : start + rows] @ down).abs().sum(dtype=torch.float64))
    count = up.shape[0] * down.shape[1]
    return total * abs(scale) / count if count else 0.0


def block_index(module_name: str) -> int | None:
    """Transformer block number from a module name ("blocks.12.attn1.to_q" -> 12), None outside blocks."""
    match = _BLOCK_RE.search(module_name)
    return int(match.group(1)) if match else None


def summarize(modules: Mapping[str, LoraTensorsLike]) -> MagnitudeSummary:
    """Per-module mean |ΔW|, their mean per block, and their unweighted mean over all modules."""
    if not modules:
        raise ValueError(
            "no LoRA modules to summarize (the file or network holds no lora_down/lora_up pairs)"
        )
    per_module = {name: mean_abs_delta(t) for name, t in modules.items()}
    blocks: dict[int, list[float]] = {}
    for name, value in per_module.items():
        index = block_index(name)
        if index is not None:
            blocks.setdefault(index, []).append(value)
    per_block = {i: sum(v) / len(v) for i, v in sorted(blocks.items())}
    mean = sum(per_module.values()) / len(per_module)
    return MagnitudeSummary(mean=mean, per_block=per_block, per_module=per_module)
