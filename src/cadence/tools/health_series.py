"""The checkpoint series the health rules read: per-expert |ΔW| at each checkpoint joined with the metrics
of the steps before it and the motion of the samples taken at it, and the questions the rules ask of it.

Experts take turns (`switch_boundary_every`), so a checkpoint interval may hold only one expert's steps and
a checkpoint may fall mid-round, one expert a turn ahead. Comparing the experts there measures the
schedule, not the training: a sawtooth in the |ΔW| ratio and "growth" of an expert that did not train.
`balanced` and `previous_balanced` let the rules compare only where both experts had their share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cadence.metrics.motion import MotionStats
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.run_folder import MAIN_EXPERT, IntervalStats, interval_stats, value_at
from cadence.tools.sample_motion import StepMotion, running_peaks

PAIR = ("high_noise", "low_noise")
BALANCE_TOLERANCE = 0.05  # relative gap between the experts' own step counts still called balanced


@dataclass(frozen=True)
class HealthWarning:
    rule: str
    step: int
    expert: str | None
    message: str
    value: float
    threshold: float
    # the checkpoint where what the rule saw began (loss_rising: before the rise); -1: none before it
    from_step: int | None = None


@dataclass(frozen=True)
class MotionPoint:
    """The motion of the samples taken at a checkpoint's own step, as fractions too: of the training clips'
    motion (the data's reference) and of the highest motion sampled after step 0 up to this step. The
    fractions are of `coarse` motion, the quantity the motion rules read."""

    stats: MotionStats
    samples: int
    of_reference: float | None = None
    of_peak: float | None = None


@dataclass
class ExpertPoint:
    """One expert at one checkpoint. growth is relative (0.054 = +5.4%) since the previous checkpoint;
    total_steps counts the expert's own training steps since the start of the run."""

    magnitude: float
    per_block: dict[int, float] = field(default_factory=dict)
    growth: float | None = None
    stats: IntervalStats = field(default_factory=IntervalStats)
    total_steps: int = 0


@dataclass
class CheckpointPoint:
    step: int
    experts: dict[str, ExpertPoint]
    weight_ratio: float | None = None  # high / low mean |ΔW|
    lr_ratio: float | None = None  # high / low mean LR over the interval
    eval_loss: float | None = None  # run-wide eval_loss at this step, else mean of the experts' ones
    motion: MotionPoint | None = None  # samples at this step (None: none sampled, or not measured yet)


@dataclass
class RunSeries:
    points: list[CheckpointPoint]
    turn: int | None = None  # steps per expert turn, read from the metrics (None: rows name no expert)
    reference: MotionStats | None = None  # the training clips' motion (data/motion_reference.py)
    sampled: dict[int, StepMotion] = field(default_factory=dict)  # every sampled step, checkpoint or not

    def index_of(self, step: int) -> int:
        return next(i for i, p in enumerate(self.points) if p.step == step)

    def balanced(self, i: int) -> bool:
        """Both experts have had their share of steps at checkpoint i: their own step counts differ by at
        most one step, or by less than a turn and at most 5% (late in a run half a turn moves |ΔW| little).
        Decided from this checkpoint alone, so live checks and `cadence analyze` agree. A checkpoint without
        a high/low pair (one expert trained, single-expert models) and a series whose metrics name no
        expert count as balanced."""
        p = self.points[i]
        if self.turn is None or not all(e in p.experts for e in PAIR):
            return True
        high, low = (p.experts[e].total_steps for e in PAIR)
        if not high or not low:
            return False
        gap = abs(high - low)
        return gap <= 1 or (gap < self.turn and gap <= BALANCE_TOLERANCE * min(high, low))

    def previous_balanced(self, i: int) -> int | None:
        """The latest balanced checkpoint before i: the start of the last whole round of turns."""
        return next((j for j in range(i - 1, -1, -1) if self.balanced(j)), None)

    def span_growth(self, j: int, i: int, expert: str) -> tuple[float, int] | None:
        """(relative |ΔW| growth, own steps) of `expert` from checkpoint j to checkpoint i."""
        a, b = self.points[j].experts.get(expert), self.points[i].experts.get(expert)
        if not a or not b or a.magnitude <= 0:
            return None
        return (b.magnitude - a.magnitude) / a.magnitude, b.total_steps - a.total_steps


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def build_series(
    magnitudes: Mapping[int, Mapping[str, MagnitudeSummary]],
    rows: list[dict[str, Any]],
    motion: Mapping[int, StepMotion] | None = None,
    reference: MotionStats | None = None,
) -> RunSeries:
    """Join per-checkpoint magnitudes with the metrics of the interval before each checkpoint and the motion
    of the samples taken at it (`motion`: sampled step -> StepMotion; `reference`: the training clips')."""
    points: list[CheckpointPoint] = []
    previous: CheckpointPoint | None = None
    motion = motion or {}
    peaks = running_peaks(motion)
    for step in sorted(magnitudes):
        lo = previous.step if previous else 0
        experts: dict[str, ExpertPoint] = {}
        for expert, summary in magnitudes[step].items():
            before = previous.experts.get(expert) if previous else None
            growth = (
                (summary.mean - before.magnitude) / before.magnitude if before and before.magnitude else None
            )
            stats = interval_stats(rows, lo, step, expert)
            total = (before.total_steps if before else 0) + stats.steps
            experts[expert] = ExpertPoint(summary.mean, dict(summary.per_block), growth, stats, total)
        high, low = experts.get("high_noise"), experts.get("low_noise")
        eval_loss = value_at(rows, step, "eval_loss")
        if eval_loss is None and MAIN_EXPERT not in experts:
            per = [v for e in experts.values() if (v := e.stats.eval_loss) is not None]
            eval_loss = sum(per) / len(per) if per and len(per) == len(experts) else None
        point = CheckpointPoint(
            step=step,
            experts=experts,
            weight_ratio=_ratio(high.magnitude, low.magnitude) if high and low else None,
            lr_ratio=_ratio(high.stats.lr, low.stats.lr) if high and low else None,
            eval_loss=eval_loss,
        )
        if step in motion:
            sampled = motion[step].stats
            point.motion = MotionPoint(
                sampled,
                len(motion[step].samples),
                _ratio(sampled.coarse, reference.coarse if reference else None),
                _ratio(sampled.coarse, peaks.get(step)),
            )
        points.append(point)
        previous = point
    return RunSeries(points, turn_length(rows), reference, dict(sorted(motion.items())))


def turn_length(rows: list[dict[str, Any]]) -> int | None:
    """The median number of consecutive steps one expert trains (`switch_boundary_every`), from the rows."""
    experts = [r.get("expert") for r in sorted(rows, key=lambda r: r["step"]) if r.get("expert") in PAIR]
    if not experts:
        return None
    runs, length = [], 1
    for before, now in zip(experts, experts[1:], strict=False):
        if now == before:
            length += 1
        else:
            runs.append(length)
            length = 1
    runs.append(length)
    return sorted(runs)[len(runs) // 2]
