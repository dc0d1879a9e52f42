"""Weight magnitudes of adapters: the effective update ΔW of each module (up @ down · alpha / rank for LoRA).

"Weight magnitude" everywhere in Cadence (metrics, analyze, inspect, UI) means the mean over modules of
mean |ΔW| — each module counts once, whatever its size, so a run with wide FFN layers and narrow attention
layers is not dominated by the FFN. This is the number the seed-003 practitioner compared between the
high- and low-noise experts by hand.

ΔW is the module's real weight change (`AdapterTensors.diff_weight`): LoKr's Kronecker product, LoHa's
Hadamard product, and for DoRA W' - W with the magnitude rescaling, when the base weight is known (a live
network; a DoRA file read alone gives its low-rank part). The maths is exact in fp32 with float64 sums. Conv
kernels are flattened to [out, in·k…] (the LoRA `up` of a conv is a 1×1 kernel), which gives the same |ΔW|
elements as the reshaped kernel.

Cost (issue 23): mean |B·A| has no closed form in the factors, so the product is formed, but never one
module at a time: LoRA modules of equal shapes (a Wan block's q/k/v/o, its FFN halves) are stacked and
multiplied together (`torch.bmm`) in row chunks of at most `_CHUNK_ELEMENTS` floats, on the device the
factors live on, and every module's sum stays there until one host read at the end. LoKr, LoHa and DoRA
keep their exact per-module ΔW (their products are not batched), also read once at the end.
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
    """mean |ΔW| of one module, exact (LoRA in row chunks, to bound memory)."""
    return module_means({"": t})[""]


def module_means(modules: Mapping[str, AdapterTensors]) -> dict[str, float]:
    """mean |ΔW| of every module, with one device->host read for all of them."""
    pending: dict[str, torch.Tensor] = {}  # name -> float64 scalar on the tensors' device
    lora: dict[tuple, list[tuple[str, torch.Tensor, torch.Tensor, float]]] = {}
    for name, t in modules.items():
        if t.algo == "lora" and t.dora_scale is None:
            up, down = lora_factors(t.down.detach(), t.up.detach())
            key = (up.device, tuple(up.shape), tuple(down.shape))
            lora.setdefault(key, []).append((name, up, down, t.scale))
        else:
            pending[name] = t.diff_weight().abs().mean(dtype=torch.float64)
    for members in lora.values():
        pending.update(_lora_means(members))
    if not pending:
        return {}
    first = next(iter(pending.values())).device
    values = torch.stack([v.to(first) for v in pending.values()]).tolist()
    means = dict(zip(pending, values, strict=True))
    return {name: means[name] for name in modules}


def _lora_means(members: list[tuple[str, torch.Tensor, torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    """mean |up @ down · scale| of LoRA modules of one shape, batched: [N, rows, in] products at a time."""
    _, up0, down0, _ = members[0]
    out_features, rank = up0.shape
    in_features = down0.shape[1]
    count = out_features * in_features
    if count == 0:
        return {name: torch.zeros((), dtype=torch.float64, device=up0.device) for name, *_ in members}
    per_batch = max(1, _CHUNK_ELEMENTS // max(1, (out_features + in_features) * rank))
    means: dict[str, torch.Tensor] = {}
    for first in range(0, len(members), per_batch):
        batch = members[first : first + per_batch]
        ups = torch.stack([up for _, up, _, _ in batch]).to(torch.float32)  # [N, out, rank]
        downs = torch.stack([down for _, _, down, _ in batch]).to(torch.float32)  # [N, rank, in]
        rows = max(1, _CHUNK_ELEMENTS // (len(batch) * in_features))
        total = torch.zeros(len(batch), dtype=torch.float64, device=ups.device)
        for start in range(0, out_features, rows):
            total += torch.bmm(ups[:, start : start + rows], downs).abs().sum(dim=(1, 2), dtype=torch.float64)
        for (name, _, _, scale), value in zip(batch, total, strict=True):
            means[name] = value * (abs(scale) / count)
    return means


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
    per_module = module_means(modules)
    from cadence.models.registry import block_layout  # the model family's block lists (FLUX has two)

    layout = block_layout(per_module)
    blocks: dict[int, list[float]] = {}
    for name, value in per_module.items():
        index = layout[name][0] if name in layout else block_index(name)
        if index is not None:
            blocks.setdefault(index, []).append(value)
    per_block = {i: sum(v) / len(v) for i, v in sorted(blocks.items())}
    mean = sum(per_module.values()) / len(per_module)
    return MagnitudeSummary(mean=mean, per_block=per_block, per_module=per_module)
