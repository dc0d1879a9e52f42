"""Average the adapters' gradients over a data-parallel group with one all-reduce per optimizer step.

The adapters are replicated: every rank holds the same LoRA weights and computes gradients from its own
rows of the global batch. After the last micro-batch the gradients are packed into one fp32 buffer (bf16
adapters too: a sum over ranks in bf16 would lose the low bits DDP keeps), summed with
`torch.distributed.all_reduce`, divided by the group size and copied back; one more element carries each
rank's "my loss was not finite" flag, so all ranks skip the same steps.

Why not `DistributedDataParallel`: its reducer hooks the wrapped module's forward, and Cadence's adapters
are not called through a forward of their own (they are hooks on the base Linears). LoRA gradients are
small next to a video step (~150 M values for a rank-32 adapter on a 14B expert), so one packed all-reduce
after backward costs little even without DDP's overlap with the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def average_gradients(params: Sequence[torch.Tensor], finite: bool, group: dist.ProcessGroup | None) -> bool:
    """Average `params`' gradients over `group`; True when every rank's loss was finite. Missing gradients
    (a rank that stopped at a non-finite micro-batch) count as zeros, and the step is skipped anyway."""
    device = params[0].device if params else torch.device("cpu")
    sizes = [p.numel() for p in params]
    flat = torch.empty(sum(sizes) + 1, dtype=torch.float32, device=device)
    offset = 0
    for p, n in zip(params, sizes, strict=True):
        view = flat[offset : offset + n]
        if p.grad is None:
            view.zero_()
        else:
            view.copy_(p.grad.reshape(-1))
        offset += n
    flat[-1] = 0.0 if finite else 1.0
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    all_finite = bool(flat[-1].item() == 0.0)
    if not all_finite:
        return False
    flat[:-1].div_(dist.get_world_size(group))
    offset = 0
    for p, n in zip(params, sizes, strict=True):
        averaged = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = averaged.to(p.dtype).clone()
        else:
            p.grad.copy_(averaged)
        offset += n
    return True


@torch.no_grad()
def broadcast_tensors(
    tensors: Sequence[torch.Tensor], src: int, group: dist.ProcessGroup | None = None
) -> None:
    """Copy `tensors` from global rank `src` into every rank's tensors of the same shapes, packed by dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype, members in by_dtype.items():
        flat = torch.cat([t.detach().reshape(-1) for t in members]).to(dtype)
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        for t in members:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
