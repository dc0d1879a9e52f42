"""Block swap: keep N transformer blocks' weights in (pinned) host memory and stream them in ahead of use.

Generic over a list of blocks. The last `num_swap` blocks live on the host; a forward pre-hook makes the
running block resident (waiting for its prefetch) and starts copying the next swapped block on a side
CUDA stream, so the copy overlaps the current block's compute. In backward the same happens in reverse,
driven by a gradient hook on each block's output (it fires just before that block's backward/recompute).

Memory is only saved with gradient checkpointing on the swapped blocks: a checkpointed block saves no
tensors in its first pass, so its weights go back to the host right after it runs; a block that saves
activations (and weight references) for backward stays resident until its backward has run.
On CPU the "device" is the CPU too: the same hooks and bookkeeping run and results are bit-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from cadence.perf.checkpointing import phase

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """One swapped block: where each tensor lives on the host, and an in-flight prefetch."""

    entries: list[tuple[nn.Module, str, bool]]  # (module, attribute, is_parameter)
    host: list[torch.Tensor]
    pending: list[torch.Tensor] | None = None
    event: object | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"loads": 0, "offloads": 0})


def _tensors(block: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    out = []
    for module in block.modules():
        out += [(module, n, True) for n, p in module._parameters.items() if p is not None]
        out += [(module, n, False) for n, b in module._buffers.items() if b is not None]
    return out


def _get(entry: tuple[nn.Module, str, bool]) -> torch.Tensor:
    module, name, is_param = entry
    return module._parameters[name].data if is_param else module._buffers[name]


def _set(entry: tuple[nn.Module, str, bool], value: torch.Tensor) -> None:
    module, name, is_param = entry
    if is_param:
        module._parameters[name].data = value
    else:
        module._buffers[name] = value


class BlockSwapper:
    """Streams the weights of the last `num_swap` of `blocks` between host memory and `device`."""

    def __init__(self, blocks: nn.ModuleList, num_swap: int, device: torch.device) -> None:
        if not 0 < num_swap < len(blocks):
            raise ValueError(
                f"model.blocks_to_swap: {num_swap} must be between 1 and {len(blocks) - 1} "
                f"(the model has {len(blocks)} blocks; at least one stays on the device)"
            )
        self.blocks = blocks
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.swapped = list(range(len(blocks) - num_swap, len(blocks)))
        self.slots: dict[int, _Slot] = {}
        self.resident: set[int] = set()
        self.max_resident = 0
        for i in self.swapped:
            entries = _tensors(blocks[i])
            host = [self._to_host(_get(e)) for e in entries]
            self.slots[i] = _Slot(entries, host)
            for e, h in zip(entries, host, strict=True):
                _set(e, h)
        self._handles = []
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(block.register_forward_hook(self._post_hook(i)))
        if self.cuda:
            torch.cuda.empty_cache()
        log.info("block swap: blocks %d-%d stream from host memory", self.swapped[0], self.swapped[-1])

    # ----------------------------------------------------------------------------------- movement
    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        host = t.detach().to("cpu", copy=True) if self.cuda else t.detach()
        return host.pin_memory() if self.cuda else host

    def prefetch(self, i: int) -> None:
        """Start copying block i to the device (side stream on CUDA); no-op when resident or in flight."""
        slot = self.slots.get(i)
        if slot is None or i in self.resident or slot.pending is not None:
            return
        if self.cuda:
            with torch.cuda.stream(self.stream):
                slot.pending = [h.to(self.device, non_blocking=True) for h in slot.host]
                slot.event = torch.cuda.Event()
                slot.event.record(self.stream)
        else:
            slot.pending = [h.to(self.device) for h in slot.host]

    def ensure(self, i: int) -> None:
        """Make block i resident on the device, waiting for its prefetch if one is in flight."""
        slot = self.slots.get(i)
        if slot is None or i in self.resident:
            return
        self.prefetch(i)
        tensors, slot.pending = slot.pending, None
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(slot.event)
            for t in tensors:
                t.record_stream(current)  # the allocator must not reuse it before compute is done
        for e, t in zip(slot.entries, tensors, strict=True):
            _set(e, t)
        slot.stats["loads"] += 1
        self.resident.add(i)
        self.max_resident = max(self.max_resident, len(self.resident))

    def offload(self, i: int) -> None:
        """Point block i back at its host copies; the device copies are freed."""
        slot = self.slots.get(i)
        if slot is None or i not in self.resident:
            return
        for e, h in zip(slot.entries, slot.host, strict=True):
            _set(e, h)
        slot.stats["offloads"] += 1
        self.resident.discard(i)

    def offload_all(self) -> None:
        for i in list(self.resident):
            self.offload(i)

    # -------------------------------------------------------------------------------------- hooks
    def _next_swapped(self, i: int, step: int) -> int | None:
        j = i + step
        while 0 <= j < len(self.blocks):
            if j in self.slots:
                return j
            j += step
        return None

    def _pre_hook(self, i: int):
        def hook(_module: nn.Module, _args: tuple) -> None:
            if phase() != "recompute":
                if i == 0:  # a new forward: whatever the last backward left behind goes back
                    self.offload_all()
                self.ensure(i)
                nxt = self._next_swapped(i, 1)
                if nxt is not None:
                    self.prefetch(nxt)
            else:
                self.ensure(i)

        return hook

    def _post_hook(self, i: int):
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            current = phase()
            if current == "recompute":
                return
            needs_backward = (
                torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad
            )
            if needs_backward:
                output.register_hook(self._grad_hook(i))
            if not needs_backward or current == "forward":
                self.offload(i)

        return hook

    def _grad_hook(self, i: int):
        def hook(grad: torch.Tensor) -> None:
            # block i+1's backward is complete (this is the gradient of its input); block i's is next
            self.offload(i + 1)
            self.ensure(i)
            prev = self._next_swapped(i, -1)
            if prev is not None:
                self.prefetch(prev)
            return None

        return hook

    def stats(self) -> dict[int, dict[str, int]]:
        return {i: dict(s.stats) for i, s in self.slots.items()}

    def remove(self) -> None:
        """Detach the hooks and bring every block back to the device."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for i in self.slots:
            self.ensure(i)
