"""Periodic checks during training: fixed-timestep eval loss, sample motion and live health rules.

They run on the current adapters between optimizer steps and add fields to that step's metrics line.
A health rule listed in `train.health.stop_on` ends the run; the checkpoint the recommender prefers is
protected from pruning so the best one is kept, and the reason is logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cadence.data.motion_reference import MotionReference, read_motion_reference
from cadence.metrics.jsonl import read_metrics
from cadence.networks.magnitude import MagnitudeSummary, summarize
from cadence.optim.factory import needs_train_eval_mode
from cadence.tools.health import HealthMonitor
from cadence.tools.sample_motion import SampleMotionReader, motion_fields
from cadence.tracking.sink import EventEmitter, no_events
from cadence.train.checkpoint import CheckpointManager
from cadence.train.ema import AdapterEMA
from cadence.train.eval import FixedEval

log = logging.getLogger(__name__)


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer, ema: AdapterEMA | None = None) -> Iterator[None]:
    """The weights users get, in the adapters for the duration: the EMA's with `train.ema_config`,
    schedule-free's averaged ones with that optimizer, else the trained weights themselves.

    Switching to the averaged weights and back is not exact in floating point, so the training-point
    weights are copied before and restored bit for bit afterwards: saving, evaluating or sampling never
    changes the training trajectory (exact resume holds).
    """
    if ema is not None:
        with ema.swapped_in():
            yield
        return
    if not needs_train_eval_mode(optimizer):
        yield
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [p.detach().clone() for p in params]
    optimizer.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        optimizer.train()  # type: ignore[attr-defined]
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)


class PeriodicChecks:
    def __init__(
        self,
        evaluator: FixedEval | None,
        eval_every: int | None,
        health: HealthMonitor | None,
        run_eval: Callable[[FixedEval], dict[str, float]],
        magnitudes: Callable[[], dict[str, Any]],
        metrics_path: Any,
        checkpoints: CheckpointManager,
    ) -> None:
        self.evaluator = evaluator
        self.eval_every = eval_every
        self.health = health
        self.run_eval = run_eval
        self.magnitudes = magnitudes
        self.metrics_path = metrics_path
        self.checkpoints = checkpoints
        self.stop_reason: str | None = None
        # sample motion: the sampler stores it in each sample's sidecar (written after this step's line), so
        # the first line after a sampled step carries it, and the health rules on motion judge it then
        run_dir = Path(checkpoints.paths.run_dir)
        self.sample_motion = SampleMotionReader(run_dir / "samples", verify=False)
        self.motion_reported = -1  # the latest sampled step whose motion a metrics line carries
        self._reference_dir = run_dir
        self._reference: MotionReference | None | bool = False  # False: not read yet
        self.emit: EventEmitter = no_events  # the recorder's event(): health warnings reach the sinks

    def state_dict(self) -> dict[str, Any]:
        """The health history (magnitudes per checked step) and the protected best step, so a resumed run
        judges growth against the same earlier checkpoints and keeps protecting the best one."""
        history = {}
        if self.health is not None:
            history = {
                step: {e: dataclasses.asdict(m) for e, m in per.items()}
                for step, per in self.health.magnitudes.items()
            }
        reported = (self.health.reported or set()) if self.health is not None else set()
        return {
            "health_magnitudes": history,
            "protected": sorted(self.checkpoints.protected),
            "motion_reported": self.motion_reported,
            "health_reported": [list(k) for k in sorted(reported, key=lambda k: (k[0], k[1], k[2] or ""))],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checkpoints.protected = set(state.get("protected", []))
        self.motion_reported = int(state.get("motion_reported", -1))
        if self.health is not None:
            reported = state.get("health_reported")
            self.health.reported = None if reported is None else {(r, int(s), e) for r, s, e in reported}
            self.health.magnitudes = {
                int(step): {e: MagnitudeSummary(**m) for e, m in per.items()}
                for step, per in state.get("health_magnitudes", {}).items()
            }

    def forces_save(self, step: int) -> bool:
        """A health check at its own interval (`train.health.every`) saves a checkpoint too: its advice names
        checkpoints, so the step it judges must exist as one."""
        return (
            self.health is not None
            and self.health.cfg.every is not None
            and self.health.due(step, saving=False)
        )

    def eval_due(self, step: int, saving: bool) -> bool:
        if self.evaluator is None:
            return False
        return step % self.eval_every == 0 if self.eval_every else saving

    def run(self, step: int, saving: bool, row: dict[str, Any], stopping: bool = False) -> dict[str, Any]:
        """Eval, sample-motion and health fields for this step's metrics line (eval is skipped when the user
        asked to stop, so a stop never waits for it). Sample motion that arrived since the last line is
        judged at once (`HealthMonitor.review`) when no check is due."""
        fields: dict[str, Any] = {}
        if self.eval_due(step, saving) and not stopping:
            assert self.evaluator is not None
            fields.update(self.run_eval(self.evaluator))
        # steps after this one can only be a former run's leftovers in a reused folder
        motion = {s: m for s, m in self.sample_motion.read().items() if s <= step}
        new = [s for s in motion if s > self.motion_reported]
        if new:
            self.motion_reported = new[-1]
            fields.update(motion_fields(motion, new[-1], self.reference()))
        if self.health is not None and self.health.due(step, saving):
            fields.update(self._health(step, {**row, **fields}, saving, motion))
        elif self.health is not None and new:
            fields.update(self._health(step, {**row, **fields}, saving, motion, review=True))
        return fields

    def reference(self) -> Any:
        """The training clips' motion (MotionStats) written at caching time, or None."""
        if self._reference is False:
            self._reference = read_motion_reference(self._reference_dir)
        return self._reference.stats if isinstance(self._reference, MotionReference) else None

    def _health(
        self, step: int, row: dict[str, Any], saving: bool, motion: dict, review: bool = False
    ) -> dict[str, Any]:
        assert self.health is not None
        rows = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) < step] + [row]
        if review:
            reviewed = self.health.review(step, rows, motion, self.reference())
            if reviewed is None:
                return {}
            result = reviewed
        else:
            result = self.health.check(step, self.magnitudes(), rows, motion, self.reference())
        for warning in result.warnings:
            log.warning("health: %s", warning.message)
            self.emit(
                "health_warning",
                {"step": step, "rule": warning.rule, "expert": warning.expert, "message": warning.message},
            )
        # only checkpoints that exist (or are being saved now) can be kept; pruning may have removed others
        saved = set(self.checkpoints.complete_steps()) | ({step} if saving else set())
        result.recommendations = [r for r in result.recommendations if r.step in saved]
        self.checkpoints.protected = {result.latest_balanced} & saved
        if result.recommendations:
            best = result.recommendations[0]
            self.checkpoints.protected.add(best.step)
            log.info("health: best checkpoint so far is step %d (%s)", best.step, "; ".join(best.reasons))
        if result.stop_reason:
            kept = result.recommendations[0].step if result.recommendations else step
            self.stop_reason = f"{result.stop_reason}; keeping checkpoint step {kept}"
            return {**result.metrics_fields(), "health_stop": self.stop_reason}
        return result.metrics_fields()


def live_magnitudes(
    networks: dict[str, Any], optimizer: torch.optim.Optimizer, ema: AdapterEMA | None = None
) -> Callable[[], dict[str, Any]]:
    """|ΔW| summaries of the weights users get (the EMA's, or schedule-free's averaged ones)."""

    def measure() -> dict[str, Any]:
        with torch.no_grad(), evaluation_weights(optimizer, ema):
            tensors = {expert: net.to_lora_tensors() for expert, net in networks.items()}
        return {expert: summarize(t) for expert, t in tensors.items()}

    return measure
