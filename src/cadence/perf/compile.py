"""Regional compilation: `torch.compile` each transformer block in place.

Compiling the 40 identical blocks one by one costs one compile (the rest reuse its code) instead of a
whole-graph compile that breaks at every data-dependent branch. `nn.Module.compile` keeps the block the
same object, so checkpointing and the model's own loop are unchanged. Order matters: attach the LoRA
network (its forward hooks on the block's Linears) *before* compiling, so the hooks are traced into the
graph; alpha/multiplier changes are Python floats dynamo guards on and recompile at most
`cache_size_limit` times per block.
"""

from __future__ import annotations

import logging

import torch
import torch._dynamo
from torch import nn

log = logging.getLogger(__name__)


def compile_blocks(
    blocks: nn.ModuleList, cache_size_limit: int = 32, backend: str = "inductor", dynamic: bool | None = None
) -> None:
    """Compile every block of `blocks` in place with `backend`; sets dynamo's recompile limit."""
    torch._dynamo.config.cache_size_limit = int(cache_size_limit)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, int(cache_size_limit) * len(blocks)
        )
    for block in blocks:
        block.compile(backend=backend, dynamic=dynamic)
    log.info("compiled %d blocks (backend %s, cache limit %d)", len(blocks), backend, cache_size_limit)
