"""Gradient stability: how often each trainable element moves the same way as in its previous update.

Why: the seed read "gradient stability" out of its automagic optimizer and averaged sign agreement over
the last ~100 parameter tensors of one step (about five blocks), so it only existed with that optimizer
and described a sliver of the network. Here it is measured from the parameter updates themselves
(update = param_after - param_before), so every optimizer gets it, over ALL trainable tensors of the
expert that stepped, each element counting once. Independent random signs give 0.5.

API: `before_step(expert, params)` / `after_step(expert)` around `optimizer.step()`; callers that already
have the updates use `observe(expert, updates)`.

Cost (issue 23): a Wan 14B expert has ~800 LoRA tensors, and one small op per tensor per stage made ~10k
ops per step. The tensors of one dtype and device are measured as one flat vector instead: the snapshot is
one `torch.cat` of views of the parameters (in their own dtype, so the difference is exact), the update's
signs are one subtraction and one `sign` on it, and the agreement is three reductions, so a step costs a
handful of ops whatever the tensor count. The counts stay on the device; the host reads them once, for
all steps measured since the last read, when a value is asked for (the metrics line), never inside
`after_step`. Memory between steps: one int8 sign per trainable element per expert; during the step, the
snapshot and the current values (one copy each in the tensors' own dtype), freed by `after_step`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_AVG_WINDOW = 200


@dataclass
class _Layout:
    """How an expert's tensors map onto flat vectors: one per (device, dtype), in first-seen order."""

    shapes: list[torch.Size]
    groups: list[list[int]]  # tensor indices of each flat vector
    ptrs: list[int] = field(default_factory=list)  # data_ptr of each tensor when its view was taken
    views: list[list[torch.Tensor]] = field(default_factory=list)  # flat views per group (params only)
    ids: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor]) -> _Layout:
        keys: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            keys.setdefault((t.device, t.dtype), []).append(i)
        return cls([t.shape for t in tensors], list(keys.values()))

    def flatten(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One new flat vector per group (a copy: `torch.cat` of flat views)."""
        return [torch.cat([tensors[i].reshape(-1) for i in group]) for group in self.groups]

    def split(self, flats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-tensor copies of flat vectors, in the tensors' order and shapes."""
        out: list[torch.Tensor | None] = [None] * len(self.shapes)
        for flat, group in zip(flats, self.groups, strict=True):
            sizes = [self.shapes[i].numel() for i in group]
            for i, part in zip(group, flat.split(sizes), strict=True):
                out[i] = part.reshape(self.shapes[i]).clone()
        return out  # type: ignore[return-value]


class _ParamViews:
    """Flat views of one expert's parameters, kept between steps while they are the same tensors."""

    def __init__(self) -> None:
        self.layout: _Layout | None = None

    def flats(self, params: Sequence[torch.Tensor]) -> tuple[_Layout, list[torch.Tensor]]:
        layout = self.layout
        if layout is None or not self._same(layout, params):
            layout = _Layout.of(params)
            layout.ids = [id(p) for p in params]
            layout.ptrs = [p.data_ptr() for p in params]
            layout.views = [[params[i].detach().view(-1) for i in group] for group in layout.groups]
            self.layout = layout
        return layout, [torch.cat(views) for views in layout.views]

    @staticmethod
    def _same(layout: _Layout, params: Sequence[torch.Tensor]) -> bool:
        """The same tensor objects, still on the same storage (`.data` replaced: the views are stale)."""
        return layout.ids == list(map(id, params)) and layout.ptrs == [p.data_ptr() for p in params]


class GradientStability:
    """Per-expert sign agreement between consecutive updates, with rolling means."""

    def __init__(self, avg_window: int = DEFAULT_AVG_WINDOW) -> None:
        if avg_window < 1:
            raise ValueError(f"avg_window must be >= 1, got {avg_window}")
        self.avg_window = avg_window
        # previous update signs: flat int8 per layout group, or per tensor as a checkpoint holds them
        self._prev_signs: dict[str, tuple[_Layout, list[torch.Tensor]] | list[torch.Tensor]] = {}
        self._views: dict[str, _ParamViews] = {}
        self._snapshots: dict[str, tuple[_Layout, list[torch.Tensor]]] = {}
        self._pending: list[tuple[str, torch.Tensor | None]] = []  # measured, not read by the host yet
        self._history: deque[float] = deque(maxlen=avg_window)
        self._expert_history: dict[str, deque[float]] = {}
        self._last: dict[str | None, float | None] = {}
        self._last_expert: str | None = None

    # ----------------------------------------------------------------------------------- measuring
    @torch.no_grad()
    def before_step(self, expert: str, params: Sequence[torch.Tensor]) -> None:
        """Snapshot the expert's trainable tensors right before `optimizer.step()`."""
        self._snapshots[expert] = self._views.setdefault(expert, _ParamViews()).flats(params)

    @torch.no_grad()
    def after_step(self, expert: str, params: Sequence[torch.Tensor] | None = None) -> None:
        """Compare the update just applied with the expert's previous one (`params`: the tensors given to
        `before_step`, the default). The value is read later, by `metrics`/`average`/`latest`."""
        taken = self._snapshots.pop(expert, None)
        if taken is None:
            raise RuntimeError(f"after_step({expert!r}) called without before_step({expert!r}) first")
        layout, before = taken
        if params is not None:
            if len(params) != len(layout.shapes):
                raise ValueError(
                    f"expert {expert!r}: {len(layout.shapes)} tensors snapshotted, {len(params)} given"
                )
            if not _ParamViews._same(layout, params):
                raise ValueError(f"expert {expert!r}: after_step got other tensors than before_step")
        now = [torch.cat(views) for views in layout.views]  # the views before_step took: same storage
        signs = []
        for current, snapshot in zip(now, before, strict=True):
            current.sub_(snapshot)  # the update, in the tensors' own dtype: its sign is exact
            signs.append(torch.sign(current).to(torch.int8))
        del before, now
        self._record(expert, layout, signs)

    @torch.no_grad()
    def observe(self, expert: str, updates: Sequence[torch.Tensor]) -> float | None:
        """Record updates the caller computed (param_after - param_before); returns this step's value."""
        layout = _Layout.of(updates)
        signs = [torch.sign(flat).to(torch.int8) for flat in layout.flatten([u.detach() for u in updates])]
        self._record(expert, layout, signs)
        return self.latest(expert)

    def _record(self, expert: str, layout: _Layout, signs: list[torch.Tensor]) -> None:
        prev = self._prev_signs.get(expert)
        counts = None
        if prev is not None:
            counts = agreement_counts(self._flat_prev(expert, prev, layout), signs)
        self._prev_signs[expert] = (layout, signs)
        self._pending.append((expert, counts))

    @staticmethod
    def _flat_prev(
        expert: str, prev: tuple[_Layout, list[torch.Tensor]] | list[torch.Tensor], layout: _Layout
    ) -> list[torch.Tensor]:
        """The previous signs as this step's flat vectors (checked to be of the same tensors' shapes)."""
        if isinstance(prev, tuple):
            before, flats = prev
            if before.shapes == layout.shapes and before.groups == layout.groups:
                return flats
            prev = before.split(flats)
        if len(prev) != len(layout.shapes):
            raise ValueError(f"expert {expert!r}: {len(prev)} tensors last step, {len(layout.shapes)} now")
        for i, (a, shape) in enumerate(zip(prev, layout.shapes, strict=True)):
            if a.shape != shape:
                raise ValueError(
                    f"expert {expert!r}: tensor {i} changed shape {tuple(a.shape)} -> {tuple(shape)}"
                )
        return layout.flatten(prev)

    def _resolve(self) -> None:
        """Read every pending measurement with one device->host transfer, in the order they were taken."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        measured = [c for _, c in pending if c is not None]
        values = torch.stack([c.to(measured[0].device) for c in measured]).tolist() if measured else []
        read = iter(values)
        for expert, counts in pending:
            value: float | None = None
            if counts is not None:
                compared, agree = next(read)
                value = agree / compared if compared else None
            self._last_expert = expert
            self._last[None] = value
            self._last[expert] = value
            if value is not None:
                self._history.append(value)
                self._expert_history.setdefault(expert, deque(maxlen=self.avg_window)).append(value)

    # ------------------------------------------------------------------------------------ reading
    def latest(self, expert: str | None = None) -> float | None:
        """The latest value (of `expert`, or of whichever expert stepped last); None before a comparison."""
        self._resolve()
        return self._last.get(expert)

    def average(self, expert: str | None = None) -> float | None:
        """Rolling mean of the last `avg_window` values (all experts when expert is None)."""
        self._resolve()
        history = self._history if expert is None else self._expert_history.get(expert)
        if not history:
            return None
        return float(sum(history) / len(history))

    def metrics(self, experts: Sequence[str] = ("high_noise", "low_noise")) -> dict[str, float | None]:
        """Fields for the metrics line: this step's value, rolling means, and per-expert variants.

        The per-expert value is the expert's most recent measurement (it may be from an earlier step
        when the other expert trained this step).
        """
        self._resolve()
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
        """Per-tensor int8 signs (the layout older checkpoints hold too) and the read values."""
        self._resolve()
        return {
            "avg_window": self.avg_window,
            "prev_signs": {e: self._tensor_signs(p) for e, p in self._prev_signs.items()},
            "history": list(self._history),
            "expert_history": {e: list(h) for e, h in self._expert_history.items()},
            "last": {("global" if k is None else k): v for k, v in self._last.items()},
            "last_expert": self._last_expert,
        }

    @staticmethod
    def _tensor_signs(prev: tuple[_Layout, list[torch.Tensor]] | list[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(prev, tuple):
            return prev[0].split(prev[1])
        return [s.clone() for s in prev]

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
        self._pending = []


def agreement_counts(prev: Sequence[torch.Tensor], cur: Sequence[torch.Tensor]) -> torch.Tensor:
    """[compared, agreeing] element counts (int64, on the device) over flat int8 sign vectors; elements
    with a zero update in either step are not compared."""
    totals = []
    for a, b in zip(prev, cur, strict=True):
        product = a * b  # 1: same sign, -1: opposite, 0: a zero update on either side
        compared = product.count_nonzero()
        net = product.sum(dtype=torch.int64)  # agreeing - disagreeing
        totals.append(torch.stack([compared, (compared + net) // 2]))
    first = totals[0].device
    return totals[0] if len(totals) == 1 else torch.stack([t.to(first) for t in totals]).sum(0)
