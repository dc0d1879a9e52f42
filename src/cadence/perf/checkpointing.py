"""Gradient checkpointing of all blocks or every N-th block, with a phase flag block swap can read.

diffusers' WanTransformer3DModel calls `self._gradient_checkpointing_func(block, *args)` for every block
when checkpointing is on; we hand it a function that checkpoints only the chosen blocks (non-reentrant,
so LoRA hooks and frozen inputs work) and runs the others plainly. The thread-local `phase()` tells
whether a block is running the checkpoint's first pass (nothing saved for backward), its recompute in
backward, or a plain forward.

With `keep_attention`, the recompute reuses each block's self-attention output from the first pass instead
of running the attention kernel again (PyTorch's selective checkpointing: a policy that saves the SDPA
kernels' results, where query and key have the same length, and recomputes everything else). Self-attention
is the costliest part of the recompute at video lengths (4·L²·d FLOPs); keeping it costs the kernel's
output, tokens × dim in the compute dtype, plus its log-sum-exp, per checkpointed block. It applies to the
PyTorch SDPA backends (native, cudnn), not to flash-attn's own kernels. An int K keeps it in the first K
checkpointed blocks only: memory grows by exactly K outputs, so a card that cannot hold all of them spends
what it has.

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
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

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


_SDPA_KERNELS = tuple(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    if hasattr(torch.ops.aten, name)
)


def _keep_self_attention(_ctx, op, *args, **_kwargs) -> CheckpointPolicy:
    """Save self-attention kernel results (query and key equally long); recompute everything else."""
    if op in _SDPA_KERNELS and args[0].shape[-2] == args[1].shape[-2]:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def _entered(*managers: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def _contexts(keep_attention: bool = False):
    """checkpoint's (first pass, recompute) contexts: the phase flag, plus the selective policy."""
    if not keep_attention:
        return _in_phase("forward"), _in_phase("recompute")
    forward, recompute = create_selective_checkpoint_contexts(_keep_self_attention)
    return _entered(_in_phase("forward"), forward), _entered(_in_phase("recompute"), recompute)


def checkpoint_block(block: nn.Module, *args: torch.Tensor, keep_attention: bool = False) -> torch.Tensor:
    """Run `block` under non-reentrant checkpointing, marking the forward/recompute phases."""
    contexts = functools.partial(_contexts, keep_attention)
    return checkpoint(block, *args, use_reentrant=False, context_fn=contexts)


def _selective(
    checkpointed: frozenset[int], offload: bool, keeping: frozenset[int], block: nn.Module, *args, **kwargs
):
    if id(block) not in checkpointed:
        return block(*args, **kwargs)
    keep_attention = id(block) in keeping
    if not offload:
        return checkpoint_block(block, *args, keep_attention=keep_attention, **kwargs)
    # the checkpoint saves its inputs through autograd's saved-tensor hooks: these send them to the host
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint_block(block, *args, keep_attention=keep_attention, **kwargs)


def checkpointed_indices(num_blocks: int, every: bool | int) -> list[int]:
    """Blocks to checkpoint: all for True/1, blocks 0, N, 2N, ... for an int N, none for False."""
    if every is False:
        return []
    step = 1 if every is True else int(every)
    if step < 1:
        raise ValueError(f"train.gradient_checkpointing: interval must be >= 1, got {every}")
    return list(range(0, num_blocks, step))


def keep_attention_indices(indices: list[int], keep: bool | int) -> list[int]:
    """Checkpointed blocks that keep self-attention: all for True, the first K for an int K, none for False."""
    if keep is True:
        return list(indices)
    if keep is False:
        return []
    if int(keep) < 1:
        raise ValueError(
            f"train.gradient_checkpointing_keep_attention: a block count must be >= 1, got {keep} (false turns it off)"
        )
    return list(indices[: int(keep)])


def enable_checkpointing(
    model: nn.Module,
    blocks: nn.ModuleList,
    every: bool | int,
    offload: bool = False,
    keep_attention: bool | int = False,
) -> list[int]:
    """Turn on diffusers' checkpointing switch with our selective function; returns the checkpointed indices.

    `keep_attention`: True keeps self-attention outputs in every checkpointed block, an int K in the first K.
    """
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
    keeping = frozenset(id(blocks[i]) for i in keep_attention_indices(indices, keep_attention))
    model.enable_gradient_checkpointing(
        gradient_checkpointing_func=functools.partial(_selective, chosen, offload, keeping)
    )
    return indices
