"""Gradient checkpointing of all blocks or every N-th block, with a phase flag block swap can read.

diffusers' WanTransformer3DModel calls `self._gradient_checkpointing_func(block, *args)` for every block
when checkpointing is on; we hand it a function that checkpoints only the chosen blocks (non-reentrant,
so LoRA hooks and frozen inputs work) and runs the others plainly. The thread-local `phase()` tells
whether a block is running the checkpoint's first pass (nothing saved for backward), its recompute in
backward, or a plain forward.
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


def _selective(checkpointed: frozenset[int], block: nn.Module, *args, **kwargs):
    if id(block) in checkpointed:
        return checkpoint_block(block, *args, **kwargs)
    return block(*args, **kwargs)


def checkpointed_indices(num_blocks: int, every: bool | int) -> list[int]:
    """Blocks to checkpoint: all for True/1, blocks 0, N, 2N, ... for an int N, none for False."""
    if every is False:
        return []
    step = 1 if every is True else int(every)
    if step < 1:
        raise ValueError(f"train.gradient_checkpointing: interval must be >= 1, got {every}")
    return list(range(0, num_blocks, step))


def enable_checkpointing(model: nn.Module, blocks: nn.ModuleList, every: bool | int) -> list[int]:
    """Turn on diffusers' checkpointing switch with our selective function; returns the checkpointed indices."""
    indices = checkpointed_indices(len(blocks), every)
    if not indices:
        if getattr(model, "gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        return []
    chosen = frozenset(id(blocks[i]) for i in indices)
    model.enable_gradient_checkpointing(gradient_checkpointing_func=functools.partial(_selective, chosen))
    return indices
