"""In-training EMA of each expert's adapter (`train.ema_config: {use_ema, ema_decay}`, ai-toolkit's keys).

What ai-toolkit does (toolkit/ema.py, BaseSDTrainProcess): one shadow copy of the trained parameters,
`shadow -= (1 - decay) * (shadow - param)` after every optimizer step; samples and saved LoRA files use the
shadow ("always save params as ema"), training continues on the raw weights. Cadence keeps that and fixes
three things for its two-expert runs and its exact resume:

- one EMA per expert, updated only at that expert's own optimizer steps: an idle expert's EMA does not
  decay towards weights that are not training (a skipped non-finite step updates nothing either);
- the shadow is fp32 and lives in the training state, so a resume continues it exactly (ai-toolkit saves
  only the EMA weights, so its resumed run trains on from the average);
- swapping the shadow in (to save, sample, evaluate or measure |ΔW|) and back restores the raw weights bit
  for bit, so those never shift training.

Re-implemented here (a few lines) rather than taken from a library: the per-expert update and the swap
contract are Cadence's, and torch's `AveragedModel` copies whole modules, which the hook-based adapters do
not need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class AdapterEMA:
    def __init__(self, networks: dict[str, nn.Module], decay: float) -> None:
        self.decay = float(decay)
        self.networks = networks
        self.shadow: dict[str, list[torch.Tensor]] = {
            expert: [p.detach().to(torch.float32).clone() for p in self._params(expert)]
            for expert in networks
        }
        self.updates: dict[str, int] = dict.fromkeys(networks, 0)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the averages from the adapters' current weights (EMA switched on in a resumed run)."""
        for expert in self.networks:
            for shadow, param in zip(self.shadow[expert], self._params(expert), strict=True):
                shadow.copy_(param.detach().to(torch.float32))
            self.updates[expert] = 0

    def _params(self, expert: str) -> list[nn.Parameter]:
        return [p for p in self.networks[expert].parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, expert: str) -> None:
        """After an optimizer step of `expert`: move its shadow towards the new weights."""
        for shadow, param in zip(self.shadow[expert], self._params(expert), strict=True):
            shadow.lerp_(param.detach().to(torch.float32), 1.0 - self.decay)
        self.updates[expert] += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA weights in the adapters for the duration; the raw weights come back bit for bit."""
        raw = {expert: [p.detach().clone() for p in self._params(expert)] for expert in self.networks}
        with torch.no_grad():
            for expert in self.networks:
                for param, shadow in zip(self._params(expert), self.shadow[expert], strict=True):
                    param.copy_(shadow.to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for expert in self.networks:
                    for param, value in zip(self._params(expert), raw[expert], strict=True):
                        param.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": dict(self.updates),
            "shadow": {expert: [t.cpu() for t in tensors] for expert, tensors in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for expert, tensors in state["shadow"].items():
            if expert not in self.shadow:
                continue
            mine = self.shadow[expert]
            if len(tensors) != len(mine) or any(
                a.shape != b.shape for a, b in zip(tensors, mine, strict=True)
            ):
                raise ValueError(
                    f"the saved EMA of {expert} does not match its adapter (rank or targets changed)"
                )
            self.shadow[expert] = [
                t.to(device=m.device, dtype=torch.float32) for t, m in zip(tensors, mine, strict=True)
            ]
        self.updates.update({k: int(v) for k, v in state.get("updates", {}).items() if k in self.updates})
