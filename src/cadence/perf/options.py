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

from cadence.networks.recovery import attach_recovery_adapter, read_recovery_adapter, resolve_adapter_file
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


def _helpers(adapter):
    """Model-specific knowledge (which blocks, which layers stay high precision) lives with the model's
    family (`cadence.models.family.ModelFamily`)."""
    from cadence.models.registry import family_of

    return family_of(adapter.arch)


def apply_quantization(adapter, model_cfg, transformers: bool = True) -> None:
    """`model.quantize` (every expert's block Linears, or with `uint4|FILE` the layers the accuracy-recovery
    adapter names, which then hooks in frozen) and `model.quantize_te` (the text encoders).
    `transformers=False` (`cadence cache`): only the text encoder, whose quantization the text cache keys."""
    helpers = _helpers(adapter)
    if model_cfg.quantize and transformers:
        recovery = _recovery_modules(adapter, model_cfg)
        for spec in adapter.experts:
            transformer = adapter.transformer(spec.name)
            linears = helpers.quantizable_linears(transformer)
            if recovery is not None:
                linears = _recovered_linears(transformer, linears, recovery.get(spec.name, {}), spec.name)
            quantize_linears(transformer, linears, model_cfg.qtype_name)
            if recovery and recovery.get(spec.name):
                adapter.recovery_adapters[spec.name] = attach_recovery_adapter(
                    transformer, recovery[spec.name], spec.name, adapter.device, adapter.dtype
                )
    if model_cfg.quantize_te:
        for encoder in adapter.text_encoders():
            quantize_text_encoder(encoder, model_cfg.qtype_te)
    if transformers:  # frozen training adapters (assistant_lora_path) hook the Linears as quantized
        adapter.attach_training_adapters()


def _recovery_modules(adapter, model_cfg) -> dict[str, dict] | None:
    if model_cfg.recovery_adapter is None:
        return None
    path = resolve_adapter_file(model_cfg.recovery_adapter)
    return read_recovery_adapter(path, [s.name for s in adapter.experts])


def _recovered_linears(transformer: nn.Module, linears: dict, modules: dict, expert: str) -> dict:
    """The layers an accuracy-recovery adapter covers (ai-toolkit quantizes those and leaves the rest)."""
    if not modules:
        log.warning("the accuracy-recovery adapter has no layers for %s: it stays unquantized", expert)
        return {}
    outside = sorted(set(modules) - set(linears))
    if outside:
        log.warning(
            "the accuracy-recovery adapter names %d layer(s) of %s that stay in high precision, e.g. %s",
            len(outside),
            expert,
            outside[:3],
        )
    return {n: m for n, m in linears.items() if n in modules}


def set_adapter_dtype(networks: dict[str, nn.Module], name: str) -> None:
    """`train.adapter_dtype`: the LoRA master weights' dtype (fp32 default; bf16 halves their memory)."""
    dtype = ADAPTER_DTYPES[name]
    for net in networks.values():
        net.to(dtype)


def apply_memory_options(
    adapter, cfg, trained_experts: list[str], networks: dict[str, nn.Module]
) -> PerfState:
    """Checkpointing, attention backend, block swap, compile and adapter dtype for the trained experts."""
    helpers, train, state = _helpers(adapter), cfg.train, PerfState()
    apply_attention_backend(
        [adapter.transformer(s.name) for s in adapter.experts], train.attention_backend, adapter.device
    )
    set_adapter_dtype(networks, train.adapter_dtype)
    for expert in trained_experts:
        transformer = adapter.transformer(expert)
        blocks = helpers.transformer_blocks(transformer)
        state.checkpointed[expert] = enable_checkpointing(
            transformer,
            blocks,
            train.gradient_checkpointing,
            offload=train.gradient_checkpointing_offload,
            keep_attention=train.gradient_checkpointing_keep_attention,
        )
        if cfg.model.blocks_to_swap:
            state.swappers[expert] = BlockSwapper(blocks, cfg.model.blocks_to_swap, adapter.device)
        if train.compile:
            compile_blocks(blocks, train.compile_cache_size_limit)
            state.compiled.append(expert)
    return state
