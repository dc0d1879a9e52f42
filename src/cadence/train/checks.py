"""Periodic checks during training: fixed-timestep eval loss, sample motion and live health rules.

They run on the current adapters between optimizer steps and add fields to that step's metrics line.
A health rule listed in `train.health.stop_on` ends the run; the checkpoint the recommender prefers is
protected from pruning so the best one is kept, and the reason is logged.

The health monitor is fed each step's row as the line is made (the metrics file is read once, at the first
step after a start or resume), and sample motion as the sidecars appear, so a check costs the same at the
30th checkpoint and at the 3,000th (issue 23).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cadence.data.motion_reference import MotionReference, read_motion_reference
from cadence.metrics.jsonl import read_metrics
from cadence.networks.magnitude import MagnitudeSummary
from cadence.optim.factory import needs_train_eval_mode
from cadence.tools.health import HealthMonitor
from cadence.tools.sample_motion import SampleMotionReader, motion_fields, running_peaks
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
        self._motion: dict[int, Any] = {}  # sampled steps up to the current step -> StepMotion
        self._later: list[int] = []  # heap of sampled steps after it (a former run's leftovers, so far)
        self._peaks: dict[int, float] = {}  # running_peaks(_motion)
        self._fed = False  # the metrics file was read into the health monitor
        self._unjudged: set[int] = set()
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
        changed = self._read_motion(step)
        self._unjudged |= changed  # motion changes the health monitor has not been given yet
        motion = self._motion
        new = sorted(s for s in changed if s in motion and s > self.motion_reported)
        if new:
            self.motion_reported = new[-1]
            fields.update(motion_fields(motion, new[-1], self.reference(), self._peaks))
        if self.health is not None:
            self._feed(step, {**row, **fields})
        if self.health is not None and self.health.due(step, saving):
            fields.update(self._health(step, {**row, **fields}, saving, motion))
        elif self.health is not None and new:
            fields.update(self._health(step, {**row, **fields}, saving, motion, review=True))
        return fields

    def _read_motion(self, step: int) -> set[int]:
        """Bring the sampled steps up to `step` into `_motion` (and their running peaks into `_peaks`);
        returns those that changed since the last call (new, other numbers, or gone)."""
        steps = self.sample_motion.read()
        newest = next(reversed(self._motion), -1)
        changed = set()
        for s in self.sample_motion.changed:
            if s not in steps:
                if self._motion.pop(s, None) is not None:
                    changed.add(s)
            elif s <= step:
                self._motion[s] = steps[s]
                changed.add(s)
            else:
                heapq.heappush(self._later, s)
        while self._later and self._later[0] <= step:
            s = heapq.heappop(self._later)
            if s in steps and self._motion.get(s) is not steps[s]:
                self._motion[s] = steps[s]
                changed.add(s)
        if not changed:
            return changed
        if min(changed) <= newest:  # an older step changed (or went): order and peaks again
            self._motion = dict(sorted(self._motion.items()))
            self._peaks = running_peaks(self._motion)
            return changed
        peak = next(reversed(self._peaks.values()), 0.0)
        for s in sorted(changed):  # only later steps were added: the peaks run on
            if s > 0:
                peak = self._peaks[s] = max(peak, self._motion[s].stats.coarse)
        return changed

    def _feed(self, step: int, row: dict[str, Any]) -> None:
        """This step's row to the health monitor; the first time, the rows the metrics file holds before it
        (a resumed run's), read once."""
        assert self.health is not None
        if not self._fed:
            self._fed = True
            self.health.feed([r for r in read_metrics(self.metrics_path) if r.get("step", 0) < step])
        self.health.feed([row])

    def reference(self) -> Any:
        """The training clips' motion (MotionStats) written at caching time, or None."""
        if self._reference is False:
            self._reference = read_motion_reference(self._reference_dir)
        return self._reference.stats if isinstance(self._reference, MotionReference) else None

    def _health(
        self,
        step: int,
        row: dict[str, Any],
        saving: bool,
        motion: dict,
        review: bool = False,
    ) -> dict[str, Any]:
        assert self.health is not None
        changed, self._unjudged = self._unjudged, set()
        if review:
            reviewed = self.health.review(step, None, motion, self.reference(), changed)
            if reviewed is None:
                return {}
            result = reviewed
        else:
            result = self.health.check(step, self.magnitudes(), None, motion, self.reference(), changed)
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
