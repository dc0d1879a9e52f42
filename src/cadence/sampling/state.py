"""Leave training exactly as sampling found it.

Inside `sampling_state`: no autograd, every transformer and LoRA network in eval mode (no dropout), the
global RNG streams (torch CPU/CUDA, numpy, random) saved, the attention backend optionally switched, and
with low_vram each expert moved onto the accelerator only while the pipeline calls it. On exit all of it
is restored - modes, multipliers, RNG states, attention processors, device placement - so a run with
sampling on trains bit-identically to one with sampling off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from cadence.networks.lora import LoRANetwork
from cadence.train.rng import capture_global_rng, restore_global_rng


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextmanager
def _modes(modules: list[torch.nn.Module]) -> Iterator[None]:
    before = [(m, m.training) for m in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in before:
            module.train(training)


@contextmanager
def _multipliers(networks: dict[str, LoRANetwork]) -> Iterator[None]:
    before = {name: (net.multiplier, net.enabled) for name, net in networks.items()}
    try:
        yield
    finally:
        for name, (multiplier, enabled) in before.items():
            networks[name].multiplier = multiplier
            networks[name].enabled = enabled


@contextmanager
def _rng() -> Iterator[None]:
    state = capture_global_rng()
    try:
        yield
    finally:
        restore_global_rng(state)


@contextmanager
def _attention(transformers: list[torch.nn.Module], backend: str) -> Iterator[None]:
    """Switch diffusers' attention dispatcher for the sampling call only (`native` touches nothing)."""
    if backend == "native":
        yield
        return
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    processors = [
        m.processor
        for t in transformers
        for m in t.modules()
        if hasattr(getattr(m, "processor", None), "_attention_backend")
    ]
    before = [(p, p._attention_backend) for p in processors]
    active = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        for transformer in transformers:
            transformer.set_attention_backend(backend)
        yield
    finally:
        for processor, value in before:
            processor._attention_backend = value
        _AttentionBackendRegistry.set_active_backend(active)


@contextmanager
def _placement(adapter, networks: dict[str, LoRANetwork]) -> Iterator[None]:
    """low_vram: only the expert the pipeline is calling sits on the accelerator (with its network)."""
    if not getattr(adapter, "low_vram", False):
        yield
        return
    names = [spec.name for spec in adapter.experts]
    modules = {n: adapter.transformer(n) for n in names}
    before = {n: _device(m) for n, m in modules.items()}
    before_nets = {n: _device(net) for n, net in networks.items()}

    def hook_for(name: str):
        def pre_hook(_module, _args):
            for other in names:
                if other != name:
                    adapter.offload(other)
                    if other in networks:
                        networks[other].to("cpu")
            adapter.onload(name)
            if name in networks:
                networks[name].to(adapter.device)

        return pre_hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, device in before.items():
            modules[name].to(device)
        for name, device in before_nets.items():
            networks[name].to(device)


@contextmanager
def sampling_state(
    adapter, networks: dict[str, LoRANetwork], attention_backend: str = "native"
) -> Iterator[None]:
    transformers = [adapter.transformer(spec.name) for spec in adapter.experts]
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_rng())
        stack.enter_context(_modes([*transformers, *networks.values()]))
        stack.enter_context(_multipliers(networks))
        stack.enter_context(_placement(adapter, networks))
        stack.enter_context(_attention(transformers, attention_backend))
        yield
