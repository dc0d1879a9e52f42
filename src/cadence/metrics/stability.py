"""Gradient stability: how often each trainable element moves the same way as in its previous update.

Why: the seed read "gradient stability" out of its automagic optimizer and averaged sign agreement over
the last ~100 parameter tensors of one step (about five blocks), so it only existed with that optimizer
and described a sliver of the network. Here it is measured from the parameter updates themselves
(update = param_after - param_before), so every optimizer gets it, over ALL trainable tensors of the
expert that stepped, each element counting once. Independent random signs give 0.5.

API choice: `before_step(expert, params)` / `after_step(expert, params)` is the primary API. It keeps one
snapshot of the trainable tensors (in their own dtype, so the difference is exact) and turns each
tensor's difference into int8 signs straight away, never holding all float updates at once. Callers that
already have the updates use `observe(expert, updates)`. Either way the memory kept between steps is one
int8 sign per trainable element per expert.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_AVG_WINDOW = 200


class GradientStability:
    """Per-expert sign agreement between consecutive updates, with rolling means."""

    def __init__(self, avg_window: int = DEFAULT_AVG_WINDOW) -> None:
        if avg_window < 1:
            raise ValueError(f"avg_window must be >= 1, got {avg_window}")
        self.avg_window = avg_window
        self._prev_signs: dict[str, list[torch.Tensor]] = {}
        self._snapshots: dict[str, list[torch.Tensor]] = {}
        self._history: deque[float] = deque(maxlen=avg_window)
        self._expert_history: dict[str, deque[float]] = {}
        self._last: dict[str | None, float | None] = {}
        self._last_expert: str | None = None

    # ----------------------------------------------------------------------------------- measuring
    @torch.no_grad()
    def before_step(self, expert: str, params: Sequence[torch.Tensor]) -> None:
        """Snapshot the expert's trainable tensors right before `optimizer.step()`."""
        self._snapshots[expert] = [p.detach().clone() for p in params]

    @torch.no_grad()
    def after_step(self, expert: str, params: Sequence[torch.Tensor]) -> float | None:
        """Compare the update just applied with the expert's previous one; None on its first step."""
        before = self._snapshots.pop(expert, None)
        if before is None:
            raise RuntimeError(f"after_step({expert!r}) called without before_step({expert!r}) first")
        if len(before) != len(params):
            raise ValueError(f"expert {expert!r}: {len(before)} tensors snapshotted, {len(params)} given")
        signs = [torch.sign(p.detach() - b).to(torch.int8) for p, b in zip(params, before, strict=True)]
        del before
        return self._record(expert, signs)

    @torch.no_grad()
    def observe(self, expert: str, updates: Sequence[torch.Tensor]) -> float | None:
        """Same as after_step, from updates the caller computed (param_after - param_before)."""
        return self._record(expert, [torch.sign(u.detach()).to(torch.int8) for u in updates])

    def _record(self, expert: str, signs: list[torch.Tensor]) -> float | None:
        prev = self._prev_signs.get(expert)
        value: float | None = None
        if prev is not None:
            value = agreement(prev, signs, expert)
        self._prev_signs[expert] = signs
        self._last_expert = expert
        self._last[None] = value
        self._last[expert] = value
        if value is not None:
            self._history.append(value)
            self._expert_history.setdefault(expert, deque(maxlen=self.avg_window)).append(value)
        return value

    # ------------------------------------------------------------------------------------ reading
    def average(self, expert: str | None = None) -> float | None:
        """Rolling mean of the last `avg_window` values (all experts when expert is None)."""
        history = self._history if expert is None else self._expert_history.get(expert)
        if not history:
            return None
        return float(sum(history) / len(history))

    def metrics(self, experts: Sequence[str] = ("high_noise", "low_noise")) -> dict[str, float | None]:
        """Fields for the metrics line: this step's value, rolling means, and per-expert variants.

        The per-expert value is the expert's most recent measurement (it may be from an earlier step
        when the other expert trained this step).
        """
        out: dict[str, float | None] = {
            "gradient_stability": self._last.get(None),
            "gradient_stability_avg": self.average(None),
        }
        for expert in experts:
            out[f"gradient_stability_{expert}"] = self._last.get(expert)
            out[f"gradient_stability_avg_{expert}"] = self.average(expert)
        return out

    # -------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "avg_window": self.avg_window,
            "prev_signs": {e: [s.clone() for s in signs] for e, signs in self._prev_signs.items()},
            "history": list(self._history),
            "expert_history": {e: list(h) for e, h in self._expert_history.items()},
            "last": {("global" if k is None else k): v for k, v in self._last.items()},
            "last_expert": self._last_expert,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        self.avg_window = int(state["avg_window"])
        self._prev_signs = {
            e: [
                s.to(device=device, dtype=torch.int8) if device is not None else s.to(torch.int8).clone()
                for s in signs
            ]
            for e, signs in state["prev_signs"].items()
        }
        self._history = deque((float(v) for v in state["history"]), maxlen=self.avg_window)
        self._expert_history = {
            e: deque((float(v) for v in h), maxlen=self.avg_window)
            for e, h in state["expert_history"].items()
        }
        self._last = {(None if k == "global" else k): v for k, v in state["last"].items()}
        self._last_expert = state["last_expert"]
        self._snapshots = {}


def agreement(prev: Sequence[torch.Tensor], cur: Sequence[torch.Tensor], expert: str = "") -> float | None:
    """Agreeing / compared elements over all tensors; elements with a zero update in either step are
    left out. None when nothing could be compared (every update was zero)."""
    if len(prev) != len(cur):
        raise ValueError(f"expert {expert!r}: {len(prev)} tensors last step, {len(cur)} now")
    agree_parts: list[torch.Tensor] = []
    compared_parts: list[torch.Tensor] = []
    for i, (a, b) in enumerate(zip(prev, cur, strict=True)):
        if a.shape != b.shape:
            raise ValueError(
                f"expert {expert!r}: tensor {i} changed shape {tuple(a.shape)} -> {tuple(b.shape)}"
            )
        both = (a != 0) & (b != 0)
        compared_parts.append(both.sum(dtype=torch.int64))
        agree_parts.append(((a == b) & both).sum(dtype=torch.int64))
    if not compared_parts:
        return None
    # One device->host sync per step instead of one per tensor.
    totals = torch.stack([torch.stack(compared_parts).sum(), torch.stack(agree_parts).sum()]).tolist()
    compared, agree = int(totals[0]), int(totals[1])
    if compared == 0:
        return None
    return agree / compared
