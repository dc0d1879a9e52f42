"""Everything the trainer measures about itself, in one place with one state dict.

Holds the trend windows (global and per expert), gradient stability, the alpha-phase scheduler and the
periodic weight-magnitude probe, and turns them into metrics fields. The probe (`magnitudes`, also what the
live health checks read) measures only experts whose weights changed since their last probe: an expert that
has not trained (nor changed alpha) keeps its summary. Phase transitions decided here reach
an expert's adapter by `apply_alphas` at that expert's next training step, so every checkpoint and sample
carries the alpha its weights were trained with.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from cadence.metrics.stability import GradientStability
from cadence.metrics.trend import TrendTracker
from cadence.networks.magnitude import MagnitudeSummary, summarize
from cadence.tracking.sink import EventEmitter, no_events

log = logging.getLogger(__name__)


class MetricsHub:
    def __init__(
        self,
        networks: dict[str, Any],
        labelled_experts: tuple[str, ...],
        window: int,
        alpha_scheduler: Any | None,
        magnitude_every: int,
    ) -> None:
        self.networks = networks
        self.labelled = labelled_experts  # expert names used as metric suffixes (empty for single-expert)
        self.trend = TrendTracker(window=window, experts=labelled_experts)
        self.stability = GradientStability(avg_window=window)
        self.alpha = alpha_scheduler
        self.magnitude_every = magnitude_every
        self.transitions: list[dict[str, Any]] = []
        # context in which weights read for metrics are the user-facing ones (schedule-free: averaged)
        self.weights_view: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
        self.weights_measured = (
            "trained"  # what weights_view shows: "trained", "ema", "schedule_free_average"
        )
        self.nan_streak = 0  # consecutive skipped (non-finite) steps
        self.nan_total = 0
        self.emit: EventEmitter = no_events  # the recorder's event(): phase changes reach the sinks
        self.trained_steps: dict[str, int] = dict.fromkeys(networks, 0)  # updates applied, this process
        self._probed: dict[str, tuple[tuple[Any, ...], MagnitudeSummary]] = {}  # expert -> (weights key, it)

    def label(self, expert: str) -> str | None:
        return expert if expert in self.labelled else None

    # ------------------------------------------------------------------------------------ per step
    def observe(self, step: int, expert: str, loss: float | None, grad_norm: float | None) -> dict[str, Any]:
        label = self.label(expert)
        if loss is not None:  # an update was applied: the expert's |ΔW| changed
            self.trained_steps[expert] = self.trained_steps.get(expert, 0) + 1
        self.trend.add_loss(loss, label)
        stability_fields = self.stability.metrics(self.labelled)
        if loss is None:  # a skipped step measured nothing: no stale stability value, nothing fed to the EMAs
            stability_fields["gradient_stability"] = None
            if label:
                stability_fields[f"gradient_stability_{label}"] = None
        else:
            self.trend.add_grad_norm(grad_norm, label)
            self.trend.add_gradient_stability(stability_fields["gradient_stability"], label)
        fields: dict[str, Any] = {}
        fields.update(self.trend.metrics())
        fields.update(stability_fields)
        fields.update(self._alpha_fields(step, expert, label))
        if step % self.magnitude_every == 0:
            fields.update(self.magnitude_fields())
        return fields

    def _alpha_fields(self, step: int, expert: str, label: str | None) -> dict[str, Any]:
        if self.alpha is None:
            net = self.networks[expert]
            return {"alpha_enabled": False, "linear_alpha": net.linear_alpha, "conv_alpha": net.conv_alpha}
        transition = self.alpha.observe(
            step, expert, self.trend.loss_stats(label), self.stability.average(label)
        )
        if transition is not None:
            # not applied here: this step's weights are saved, sampled and evaluated after this call, and
            # they were trained at the old alpha; the loop applies the new one before the next step
            from cadence.schedule.alpha_phases import describe_transition

            record = transition.to_dict()
            self.transitions.append(record)
            log.info("alpha phase change: %s", describe_transition(transition))
            log.info("alpha phase evidence: %s", record["evidence"])
            fields_of = ("expert", "from_phase", "to_phase", "alphas_before", "alphas_after")
            event = {k: record[k] for k in fields_of}
            self.emit("alpha_phase", {"step": step, **event, "message": describe_transition(transition)})
        fields = self.alpha.metrics_fields(expert, transition)
        # alpha in force = the one in each adapter: what it last trained with and what a file saved now holds
        for name, net in self.networks.items():
            for sfx in [f"_{name}"] * (name != "main") + [""] * (name == expert):
                fields[f"linear_alpha{sfx}"], fields[f"conv_alpha{sfx}"] = net.linear_alpha, net.conv_alpha
        return fields

    def apply_alphas(self, experts: list[str] | None = None) -> None:
        """Push the scheduler's current alphas into these experts' adapters (all by default).

        The loop calls it for the expert about to train, so a phase change reaches an adapter at that expert's
        next training step: until then its files and samples keep the alpha its weights were trained with.
        """
        if self.alpha is None:
            return
        for expert, net in self.networks.items():
            if experts is None or expert in experts:
                alphas = self.alpha.current_alphas(expert)
                net.set_alpha(linear=alphas.get("linear"), conv=alphas.get("conv"))

    @torch.no_grad()
    def magnitudes(self) -> dict[str, MagnitudeSummary]:
        """|ΔW| summaries of the weights users get (`weights_view`), per expert. An expert whose weights did
        not change since its last probe (no update applied, same alphas) keeps that probe's summary."""
        keys = {expert: self._weights_key(expert) for expert in self.networks}
        stale = [e for e in self.networks if e not in self._probed or self._probed[e][0] != keys[e]]
        if stale:
            with self.weights_view():
                tensors = {expert: self.networks[expert].to_lora_tensors() for expert in stale}
            for expert in stale:
                self._probed[expert] = (keys[expert], summarize(tensors[expert]))
        return {expert: self._probed[expert][1] for expert in self.networks}

    def _weights_key(self, expert: str) -> tuple[Any, ...]:
        net = self.networks[expert]
        return (self.trained_steps.get(expert, 0), net.linear_alpha, net.conv_alpha, self.weights_measured)

    def magnitude_fields(self) -> dict[str, Any]:
        """Mean |B·A·alpha/rank| per expert and the high/low ratio (seed 003's weight magnitude)."""
        fields: dict[str, Any] = {}
        for expert, summary in self.magnitudes().items():
            fields[f"weight_magnitude{'_' + expert if self.label(expert) else ''}"] = summary.mean
        high, low = fields.get("weight_magnitude_high_noise"), fields.get("weight_magnitude_low_noise")
        if high is not None and low:
            fields["weight_ratio"] = high / low
        fields["weights_measured"] = self.weights_measured
        return fields

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "trend": self.trend.state_dict(),
            "stability": self.stability.state_dict(),
            "alpha": self.alpha.state_dict() if self.alpha is not None else None,
            "transitions": list(self.transitions),
            "nan": {"streak": self.nan_streak, "total": self.nan_total},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trend.load_state_dict(state["trend"])
        # previous update signs live beside the adapters (the GPU on a CUDA run; checkpoints load on the CPU)
        device = next(iter(self.networks.values())).parameters().__next__().device
        self.stability.load_state_dict(state["stability"], device=device)
        if self.alpha is not None and state.get("alpha") is not None:
            self.alpha.load_state_dict(state["alpha"])  # the adapters' alphas come back from the checkpoint
        self.transitions = list(state.get("transitions", []))
        self.nan_streak = state["nan"]["streak"]
        self.nan_total = state["nan"]["total"]
