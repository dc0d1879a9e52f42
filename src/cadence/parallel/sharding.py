"""`parallel.shard_base`: each frozen block of a transformer sharded over the data-parallel ranks (FSDP2).

torch's `fully_shard` is applied to every transformer block and then to the transformer itself (the
embeddings, norms and output head), the layout torchtune and torchtitan use: a block's parameters are
all-gathered just before its forward (and again for the backward's input gradients) and freed after, so a
rank keeps 1/N of the base between blocks. Nothing of the base needs a gradient, so no reduce-scatter ever
runs; the adapters are not FSDP's business: they stay replicated (their hooks run inside the block's
forward, when the weights are whole) and `grads.average_gradients` averages their gradients.

Gradient checkpointing composes (the recompute unshards the block again); fp8 weights are buffers, which
FSDP2 keeps whole on every rank (only parameters are sharded), so with `model.qtype: fp8` the sharding
covers the high-precision parameters only. Why FSDP2 and not accelerate's FSDP plugin: the plugin wraps the
model for the optimizer (FSDP1's flat parameters, or FSDP2 through `accelerator.prepare`), which would take
the adapters' parameters into its wrapping and its checkpoint format; `fully_shard` on the frozen blocks is
exactly the part needed and leaves the adapters, optimizer and checkpoints as they are in one process.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def _blocks(transformer: nn.Module) -> nn.ModuleList:
    """The repeated blocks (model knowledge lives in models/, as for checkpointing and block swap)."""
    from cadence.models import wan_memory

    return wan_memory.transformer_blocks(transformer)


def shard_transformer(transformer: nn.Module, device: torch.device, group: dist.ProcessGroup | None) -> int:
    """fully_shard each block, then the root; returns the bytes of parameters this rank keeps."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(group or dist.group.WORLD, device.type)
    for block in _blocks(transformer):
        fully_shard(block, mesh=mesh)
    fully_shard(transformer, mesh=mesh)
    kept = 0
    for param in transformer.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        kept += local.numel() * local.element_size()
    return kept
