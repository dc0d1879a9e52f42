"""Gradient checkpointing of all blocks or every N-th block, with a phase flag block swap can read.

diffusers' WanTransformer3DModel calls `self._gradient_checkpointing_func(block, *args)` for every block
when checkpointing is on; we hand it a function that checkpoints only the chosen blocks (non-reentrant,
so LoRA hooks and frozen inputs work) and runs the others plainly. The thread-local `phase()` tells
whether a block is running the checkpoint's first pass (nothing saved for backward), its recompute in
backward, or a plain forward.

With `offload`, what a checkpointed block keeps for backward (its inputs: the hidden states, L x dim per
block, the largest memory left once the weights are swapped out) goes to pinned host memory and comes back
for the recompute: one device-to-host and one host-to-device copy per block and step.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_state = threading.local()


def phase() -> str:
    """'forward' (checkpoint first pass), 'recompute' (inside backward) or 'plain'."""
    return getattr(_state, "phase", "plain")


@contextlib.contextmanager
def _in_phase(name: str) -> Iterator[None]:
    old = phase()
    _state.phase = name
    try:
        yield
    finally:
        _state.phase = old


def _contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return _in_phase("forward"), _in_phase("recompute")


def checkpoint_block(block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """Run `block` under non-reentrant checkpointing, marking the forward/recompute phases."""
    return checkpoint(block, *args, use_reentrant=False, context_fn=_contexts)


def _selective(checkpointed: frozenset[int], offload: bool, block: nn.Module, *args, **kwargs):
    if id(block) not in checkpointed:
        return block(*args, **kwargs)
    if not offload:
        return checkpoint_block(block, *args, **kwargs)
    # the checkpoint saves its inputs through autograd's saved-tensor hooks: these send them to the host
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint_block(block, *args, **kwargs)


def checkpointed_indices(num_blocks: int, every: bool | int) -> list[int]:
    """Blocks to checkpoint: all for True/1, blocks 0, N, 2N, ... for an int N, none for False."""
    if every is False:
        return []
    step = 1 if every is True else int(every)
    if step < 1:
        raise ValueError(f"train.gradient_checkpointing: interval must be >= 1, got {every}")
    return list(range(0, num_blocks, step))


def enable_checkpointing(
    model: nn.Module, blocks: nn.ModuleList, every: bool | int, offload: bool = False
) -> list[int]:
    """Turn on diffusers' checkpointing switch with our selective function; returns the checkpointed indices."""
    indices = checkpointed_indices(len(blocks), every)
    if offload and not indices:
        raise ValueError(
            "train.gradient_checkpointing_offload needs train.gradient_checkpointing (true or N): it moves "
            "what checkpointed blocks save to host memory"
        )
    if not indices:
        if getattr(model, "gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        return []
    chosen = frozenset(id(blocks[i]) for i in indices)
    model.enable_gradient_checkpointing(
        gradient_checkpointing_func=functools.partial(_selective, chosen, offload)
    )
    return indices
