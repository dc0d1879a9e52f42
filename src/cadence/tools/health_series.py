"""The checkpoint series the health rules read: per-expert |ΔW| at each checkpoint joined with the metrics
of the steps before it and the motion of the samples taken at it, and the questions the rules ask of it.

Experts take turns (`switch_boundary_every`), so a checkpoint interval may hold only one expert's steps and
a checkpoint may fall mid-round, one expert a turn ahead. Comparing the experts there measures the
schedule, not the training: a sawtooth in the |ΔW| ratio and "growth" of an expert that did not train.
`balanced` and `previous_balanced` let the rules compare only where both experts had their share.

Linear cost (issue 23): `SeriesBuilder` reads each metrics row once, into the interval of the checkpoint it
precedes, and the live checks feed it row by row as training writes them; the series answers the rules'
questions about earlier checkpoints (balance, the latest balanced one, the highest ratio so far) from
prefix tables built once as points are added (`series_index.SeriesIndex`), so judging a checkpoint does not
rescan the ones before it.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cadence.metrics.motion import MotionStats
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.run_folder import MAIN_EXPERT, IntervalAccumulator, IntervalStats, ValueAtStep
from cadence.tools.sample_motion import StepMotion, running_peaks
from cadence.tools.series_index import PAIR, SeriesIndex

__all__ = ["PAIR", "BALANCE_TOLERANCE", "RunSeries", "SeriesBuilder", "build_series", "turn_length"]
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
    index: SeriesIndex = field(default_factory=SeriesIndex, repr=False, compare=False)
    # the first point added or changed since a verdict cache (`health.Evaluation`) last read the series
    first_changed: int | None = field(default=0, repr=False, compare=False)

    def changed(self, start: int) -> None:
        """Points from `start` on were added or changed (or, with 0, the turn or the reference did)."""
        self.index.truncate(start)
        self.first_changed = start if self.first_changed is None else min(self.first_changed, start)

    def index_of(self, step: int) -> int:
        return next(i for i, p in enumerate(self.points) if p.step == step)

    def point_balanced(self, i: int) -> bool:
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

    def balanced(self, i: int) -> bool:
        return self.index.upto(self, i).balanced[i]

    def previous_balanced(self, i: int) -> int | None:
        """The latest balanced checkpoint before i: the start of the last whole round of turns."""
        return self.index.upto(self, i).previous_balanced(i)

    def tables(self, i: int) -> SeriesIndex:
        """The prefix tables, covering points up to i."""
        return self.index.upto(self, i)

    def span_growth(self, j: int, i: int, expert: str) -> tuple[float, int] | None:
        """(relative |ΔW| growth, own steps) of `expert` from checkpoint j to checkpoint i."""
        a, b = self.points[j].experts.get(expert), self.points[i].experts.get(expert)
        if not a or not b or a.magnitude <= 0:
            return None
        return (b.magnitude - a.magnitude) / a.magnitude, b.total_steps - a.total_steps


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


class TurnCounter:
    """`turn_length` of the rows fed so far: the expert sequence's run lengths, the last one still open."""

    def __init__(self) -> None:
        self.closed: Counter[int] = Counter()
        self.expert: str | None = None
        self.length = 0

    def add(self, row: dict[str, Any]) -> None:
        expert = row.get("expert")
        if expert not in PAIR:
            return
        if expert == self.expert:
            self.length += 1
            return
        if self.expert is not None:
            self.closed[self.length] += 1
        self.expert, self.length = expert, 1

    def median(self) -> int | None:
        """The upper median of the run lengths (the open run counts), as `turn_length`."""
        if self.expert is None:
            return None
        runs = self.closed + Counter({self.length: 1})
        target = sum(runs.values()) // 2
        for length in sorted(runs):
            target -= runs[length]
            if target < 0:
                return length
        raise AssertionError("unreachable")


class SeriesBuilder:
    """Builds a RunSeries incrementally: rows in step order (`add_row`), a checkpoint's magnitudes when it
    is judged (`add_checkpoint`), sample motion as it appears (`set_motion`). Every change tells the series
    from which point on it changed (`RunSeries.changed`), so its prefix tables, and the verdicts a caller
    keeps per point, hold for the points before that."""

    def __init__(self) -> None:
        self.series = RunSeries([])
        self.turns = TurnCounter()
        self.last_row_step: int | None = None
        self._open: list[dict[str, Any]] = []  # rows after the latest checkpoint
        self._steps: list[int] = []  # the points' steps (for bisect)
        self._motion: dict[int, StepMotion] = {}  # sampled step -> motion, in step order
        self._peaks: dict[int, float] = {}  # running_peaks of it
        self._newest = -1  # the latest sampled step
        self._motion_given = False  # set_motion was called
        self.series.sampled = self._motion

    # ------------------------------------------------------------------------------------ rows
    def add_row(self, row: dict[str, Any]) -> None:
        """One metrics row. A row at or before the latest one fed is skipped (callers may pass every row
        again), and one at or before the latest checkpoint counts only for the turn length."""
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        if self.last_row_step is not None and step <= self.last_row_step:
            return
        self.last_row_step = step
        self.turns.add(row)
        if not self._steps or step > self._steps[-1]:
            self._open.append(row)
        self._set_turn(self.turns.median())

    def _set_turn(self, turn: int | None) -> None:
        if turn != self.series.turn:
            self.series.turn = turn
            self.series.changed(0)  # balance is judged against the turn: every point again

    # ------------------------------------------------------------------------------- checkpoints
    def add_checkpoint(self, step: int, magnitudes: Mapping[str, MagnitudeSummary]) -> int:
        """Close the rows since the previous checkpoint into a point at `step` (after every point so far);
        returns its index."""
        points = self.series.points
        if self._steps and step <= self._steps[-1]:
            raise ValueError(f"checkpoint {step} is not after the latest one ({self._steps[-1]})")
        rows, self._open = self._open, []
        previous = points[-1] if points else None
        experts: dict[str, ExpertPoint] = {}
        for expert, summary in magnitudes.items():
            before = previous.experts.get(expert) if previous else None
            growth = (
                (summary.mean - before.magnitude) / before.magnitude if before and before.magnitude else None
            )
            accumulator = IntervalAccumulator(expert)
            for row in rows:
                accumulator.add(row)
            stats = accumulator.stats(step)
            total = (before.total_steps if before else 0) + stats.steps
            experts[expert] = ExpertPoint(summary.mean, dict(summary.per_block), growth, stats, total)
        high, low = experts.get("high_noise"), experts.get("low_noise")
        run_eval = ValueAtStep("eval_loss")
        for row in rows:
            run_eval.add(row)
        eval_loss = run_eval.at(step)
        if eval_loss is None and MAIN_EXPERT not in experts:
            per = [v for e in experts.values() if (v := e.stats.eval_loss) is not None]
            eval_loss = sum(per) / len(per) if per and len(per) == len(experts) else None
        points.append(
            CheckpointPoint(
                step=step,
                experts=experts,
                weight_ratio=_ratio(high.magnitude, low.magnitude) if high and low else None,
                lr_ratio=_ratio(high.stats.lr, low.stats.lr) if high and low else None,
                eval_loss=eval_loss,
            )
        )
        self._steps.append(step)
        index = len(points) - 1
        self._motion_point(index)
        self.series.changed(index)
        return index

    # ------------------------------------------------------------------------------------ motion
    def set_motion(
        self,
        motion: Mapping[int, StepMotion],
        reference: MotionStats | None,
        changed: set[int] | None = None,
    ) -> int | None:
        """The sample motion measured so far (sampled step -> StepMotion) and the training clips'.
        `changed`: the sampled steps that differ from the previous call, when the caller knows (None: every
        step is compared). Returns the first point whose motion changed (None: none did)."""
        series = self.series
        new_reference = reference != series.reference
        series.reference = reference
        if not self._motion_given:  # a caller's changes are relative to what it gave before
            changed, self._motion_given = None, True
        if changed is None:
            known = self._motion
            changed = {s for s in set(known) | set(motion) if known.get(s) is not motion.get(s)}
        indices: list[int] | range
        if not new_reference and all(s > self._newest and s in motion for s in changed):
            peak = next(reversed(self._peaks.values()), 0.0)
            for step in sorted(changed):  # the usual case: samples of a later step appeared
                self._motion[step] = motion[step]
                if step > 0:
                    peak = self._peaks[step] = max(peak, motion[step].stats.coarse)
                self._newest = step
            indices = sorted(i for s in changed if (i := self._point_at(s)) is not None)
        else:
            self._set_all_motion(motion)
            indices = range(len(series.points))
        first: int | None = 0 if new_reference and series.points else None
        for i in indices:
            before = series.points[i].motion
            self._motion_point(i)
            if series.points[i].motion != before and (first is None or i < first):
                first = i
        if first is not None:
            series.changed(first)
        return first

    def _set_all_motion(self, motion: Mapping[int, StepMotion]) -> None:
        self._motion = dict(sorted(motion.items()))
        self._peaks = running_peaks(self._motion)
        self._newest = next(reversed(self._motion), -1)
        self.series.sampled = self._motion

    def _point_at(self, step: int) -> int | None:
        i = bisect.bisect_left(self._steps, step)
        return i if i < len(self._steps) and self._steps[i] == step else None

    def _motion_point(self, i: int) -> None:
        point = self.series.points[i]
        measured = self._motion.get(point.step)
        if measured is None:
            point.motion = None
            return
        reference = self.series.reference
        point.motion = MotionPoint(
            measured.stats,
            len(measured.samples),
            _ratio(measured.stats.coarse, reference.coarse if reference else None),
            _ratio(measured.stats.coarse, self._peaks.get(point.step)),
        )

    # ------------------------------------------------------------------------------------- batch
    @classmethod
    def of(
        cls,
        magnitudes: Mapping[int, Mapping[str, MagnitudeSummary]],
        rows: list[dict[str, Any]],
        motion: Mapping[int, StepMotion] | None = None,
        reference: MotionStats | None = None,
    ) -> SeriesBuilder:
        """A builder holding a whole run: every row sorted by step goes, once, into the interval of the
        first checkpoint at or after it (rows of one step keep their order)."""
        builder = cls()
        builder._set_all_motion(motion or {})
        builder.series.reference = reference
        ordered = sorted(rows, key=lambda r: r["step"])
        position = 0
        for step in sorted(magnitudes):
            end = bisect.bisect_right(ordered, step, lo=position, key=lambda r: r["step"])
            builder._open = ordered[position:end]
            position = end
            builder.add_checkpoint(step, magnitudes[step])
        builder._open = ordered[position:]
        for row in ordered:
            builder.turns.add(row)
        builder.series.turn = builder.turns.median()
        builder.last_row_step = ordered[-1]["step"] if ordered else None
        builder.series.changed(0)
        return builder


def build_series(
    magnitudes: Mapping[int, Mapping[str, MagnitudeSummary]],
    rows: list[dict[str, Any]],
    motion: Mapping[int, StepMotion] | None = None,
    reference: MotionStats | None = None,
) -> RunSeries:
    """Join per-checkpoint magnitudes with the metrics of the interval before each checkpoint and the motion
    of the samples taken at it (`motion`: sampled step -> StepMotion; `reference`: the training clips')."""
    return SeriesBuilder.of(magnitudes, rows, motion, reference).series


def turn_length(rows: list[dict[str, Any]]) -> int | None:
    """The median number of consecutive steps one expert trains (`switch_boundary_every`), from the rows."""
    counter = TurnCounter()
    for row in sorted(rows, key=lambda r: r["step"]):
        counter.add(row)
    return counter.median()
