"""Weight magnitudes of adapters: the effective update ΔW of each module (up @ down · alpha / rank for LoRA).

"Weight magnitude" everywhere in Cadence (metrics, analyze, inspect, UI) means the mean over modules of
mean |ΔW| — each module counts once, whatever its size, so a run with wide FFN layers and narrow attention
layers is not dominated by the FFN. This is the number the seed-003 practitioner compared between the
high- and low-noise experts by hand.

ΔW is the module's real weight change (`AdapterTensors.diff_weight`): LoKr's Kronecker product, LoHa's
Hadamard product, and for DoRA W' - W with the magnitude rescaling, when the base weight is known (a live
network; a DoRA file read alone gives its low-rank part). The maths is exact in fp32; LoRA's is materialised
in row chunks, so even a 5120×13824 FFN update never holds more than `_CHUNK_ELEMENTS` floats at once. Conv
kernels are flattened to [out, in·k…] (the LoRA `up` of a conv is a 1×1 kernel), which gives the same |ΔW|
elements as the reshaped kernel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from cadence.networks.tensors import AdapterTensors, lora_factors

# Max ΔW elements materialised at once by mean_abs_delta (fp32: 64 MiB).
_CHUNK_ELEMENTS = 16 * 1024 * 1024
_BLOCK_RE = re.compile(r"(?:^|[._])blocks\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class MagnitudeSummary:
    """mean = mean over modules of mean |ΔW|; per_block/per_module use the same per-module numbers."""

    mean: float
    per_block: dict[int, float] = field(default_factory=dict)
    per_module: dict[str, float] = field(default_factory=dict)


def delta_weight(t: AdapterTensors) -> torch.Tensor:
    """ΔW in fp32, shaped like the base weight ([out, in] or [out, in, k…])."""
    return t.diff_weight()


def mean_abs_delta(t: AdapterTensors) -> float:
    """mean |ΔW| of one module, exact (LoRA without DoRA in row chunks, to bound memory)."""
    if t.algo != "lora" or t.dora_scale is not None:
        return float(t.diff_weight().abs().mean(dtype=torch.float64))
    up, down = lora_factors(t.down.detach().to(torch.float32), t.up.detach().to(torch.float32))
    scale = t.scale
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


def summarize(modules: Mapping[str, AdapterTensors]) -> MagnitudeSummary:
    """Per-module mean |ΔW|, their mean per block, and their unweighted mean over all modules."""
    if not modules:
        raise ValueError(
            "no LoRA modules to summarize (the file or network holds no LoRA, LoKr or LoHa modules)"
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
