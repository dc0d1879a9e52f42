"""The calls train setup makes to apply the speed/memory options of a job config.

Order (the lead's `build_training`):
    adapter = load_model_adapter(cfg.model, device, dtype)
    apply_quantization(adapter, cfg.model)              # before text caching and before LoRA (quanto
                                                        # replaces Linears; fp8 keeps them)
    ... caches, networks = _build_networks(...)         # LoRA hooks attached
    perf = apply_memory_options(adapter, cfg, experts, networks)   # instead of enable_gradient_checkpointing
    ... param groups / optimizer (after: adapter_dtype casts the LoRA weights)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from cadence.perf.attention import apply_attention_backend
from cadence.perf.block_swap import BlockSwapper
from cadence.perf.checkpointing import enable_checkpointing
from cadence.perf.compile import compile_blocks
from cadence.perf.quantize import quantize_linears, quantize_text_encoder

log = logging.getLogger(__name__)

ADAPTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class PerfState:
    """What apply_memory_options set up, per expert (kept so the loop/bench can inspect or undo it)."""

    checkpointed: dict[str, list[int]] = field(default_factory=dict)
    swappers: dict[str, BlockSwapper] = field(default_factory=dict)
    compiled: list[str] = field(default_factory=list)


def _helpers():
    """Model-specific knowledge (which blocks, which layers stay high precision) lives with the model."""
    from cadence.models import wan_memory

    return wan_memory


def apply_quantization(adapter, model_cfg) -> None:
    """`model.quantize` (every expert's block Linears) and `model.quantize_te` (the text encoder)."""
    helpers = _helpers()
    if model_cfg.quantize:
        for spec in adapter.experts:
            transformer = adapter.transformer(spec.name)
            quantize_linears(transformer, helpers.quantizable_linears(transformer), model_cfg.qtype)
    encoder = adapter.components.get("text_encoder")
    if model_cfg.quantize_te and encoder is not None:
        quantize_text_encoder(encoder, model_cfg.qtype_te)


def set_adapter_dtype(networks: dict[str, nn.Module], name: str) -> None:
    """`train.adapter_dtype`: the LoRA master weights' dtype (fp32 default; bf16 halves their memory)."""
    dtype = ADAPTER_DTYPES[name]
    for net in networks.values():
        net.to(dtype)


def apply_memory_options(
    adapter, cfg, trained_experts: list[str], networks: dict[str, nn.Module]
) -> PerfState:
    """Checkpointing, attention backend, block swap, compile and adapter dtype for the trained experts."""
    helpers, train, state = _helpers(), cfg.train, PerfState()
    if cfg.model.blocks_to_swap and train.compile:
        raise ValueError(
            "model.blocks_to_swap and train.compile cannot be combined: swapping moves weights between "
            "devices under the compiled graph; turn one of them off"
        )
    apply_attention_backend(
        [adapter.transformer(s.name) for s in adapter.experts], train.attention_backend, adapter.device
    )
    set_adapter_dtype(networks, train.adapter_dtype)
    for expert in trained_experts:
        transformer = adapter.transformer(expert)
        blocks = helpers.transformer_blocks(transformer)
        state.checkpointed[expert] = enable_checkpointing(
            transformer, blocks, train.gradient_checkpointing, train.gradient_checkpointing_offload
        )
        if cfg.model.blocks_to_swap:
            state.swappers[expert] = BlockSwapper(blocks, cfg.model.blocks_to_swap, adapter.device)
        if train.compile:
            compile_blocks(blocks, train.compile_cache_size_limit)
            state.compiled.append(expert)
    return state
