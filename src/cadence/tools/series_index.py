"""Prefix tables over a checkpoint series, so each health rule judges a checkpoint in constant time.

The rules ask about the checkpoints before the one they judge: the latest balanced one, the highest
balanced |ΔW| ratio so far, each expert's best pair of loss intervals so far, the sampled checkpoints' peak
pair and noise level. Rescanning the earlier checkpoints for every one made `cadence analyze` quadratic in
the checkpoint count and a run's live checks cubic (issue 23). These tables are extended as the series
grows and cut back from the first point that changed (`truncate`), so the live checks, which add one point
at a time, extend them by one entry per check.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cadence.tools.run_folder import IntervalStats

if TYPE_CHECKING:
    from cadence.tools.health_series import CheckpointPoint, RunSeries

PAIR = ("high_noise", "low_noise")
_EPS = 1e-6  # diag/s; a frozen sample's motion (0) enters the logs as this


def pool(a: IntervalStats, b: IntervalStats) -> IntervalStats:
    """Mean and sample std of the union of two intervals' losses."""
    n = a.loss_count + b.loss_count
    mean = (a.loss_mean * a.loss_count + b.loss_mean * b.loss_count) / n  # type: ignore[operator]
    ss = sum(
        (x.loss_count - 1) * x.loss_std**2 + x.loss_count * (x.loss_mean - mean) ** 2  # type: ignore[operator]
        for x in (a, b)
    )
    return IntervalStats(loss_mean=mean, loss_std=math.sqrt(ss / (n - 1)), loss_count=n)


def has_losses(p: CheckpointPoint, expert: str) -> bool:
    e = p.experts.get(expert)
    return e is not None and e.stats.loss_std is not None and e.stats.loss_count >= 2


@dataclass
class LossPairs:
    """One expert's checkpoints with losses, and the best (lowest-mean) pool of two consecutive ones so far."""

    trained: list[int] = field(default_factory=list)  # point indices
    pools: list[IntervalStats] = field(default_factory=list)  # pool(trained[j], trained[j + 1])
    best: list[int] = field(default_factory=list)  # best[j]: index into pools of the lowest mean in 0..j

    def truncate(self, start: int) -> None:
        keep = bisect.bisect_left(self.trained, start)
        del self.trained[keep:]
        del self.pools[max(0, keep - 1) :]
        del self.best[max(0, keep - 1) :]

    def add(self, series: RunSeries, i: int, expert: str) -> None:
        if not has_losses(series.points[i], expert):
            return
        self.trained.append(i)
        if len(self.trained) >= 2:
            a, b = (series.points[k].experts[expert].stats for k in self.trained[-2:])
            self.pools.append(pool(a, b))
            j = len(self.pools) - 1
            better = not self.best or self.pools[j].loss_mean < self.pools[self.best[-1]].loss_mean  # type: ignore[operator]
            self.best.append(j if better else self.best[-1])


@dataclass
class MotionTable:
    """The sampled checkpoints in order: coarse motion, the peak pair so far, and what `log_noise` needs."""

    points: list[int] = field(default_factory=list)  # point indices with motion
    values: list[float] = field(default_factory=list)
    pair_best: list[int] = field(
        default_factory=list
    )  # [j]: first highest mean of values[k], values[k+1], k<=j
    sumsq: list[float] = field(default_factory=lambda: [0.0])  # [n]: sum of the first n squared log steps
    abs_median: list[float] = field(default_factory=list)  # [n-1]: median |log step| of the first n steps
    excess_runs: dict[float, list[int]] = field(default_factory=dict)  # limit -> run of values above it
    _low: list[float] = field(default_factory=list)  # max-heap (negated) of the smaller half of |steps|
    _high: list[float] = field(default_factory=list)  # min-heap of the larger half

    def add(self, i: int, value: float) -> None:
        self.points.append(i)
        self.values.append(value)
        n = len(self.values)
        if n >= 2:
            pair = (self.values[-2] + value) / 2
            j = n - 2
            if not self.pair_best or pair > self._pair(self.pair_best[-1]):
                self.pair_best.append(j)
            else:
                self.pair_best.append(self.pair_best[-1])
            step = math.log(max(value, _EPS)) - math.log(max(self.values[-2], _EPS))
            self.sumsq.append(self.sumsq[-1] + step * step)
            self._push(abs(step))
            self.abs_median.append(self._median())
        for limit, runs in self.excess_runs.items():
            runs.append(runs[-1] + 1 if runs and value > limit else (1 if value > limit else 0))

    def _pair(self, j: int) -> float:
        return (self.values[j] + self.values[j + 1]) / 2

    def _push(self, x: float) -> None:
        if self._low and x > -self._low[0]:
            heapq.heappush(self._high, x)
        else:
            heapq.heappush(self._low, -x)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def _median(self) -> float:
        """statistics.median of the pushed values (the mean of the middle two for an even count)."""
        if len(self._low) > len(self._high):
            return -self._low[0]
        return (-self._low[0] + self._high[0]) / 2

    def runs_above(self, limit: float) -> list[int]:
        if limit not in self.excess_runs:
            runs: list[int] = []
            for value in self.values:
                runs.append(runs[-1] + 1 if runs and value > limit else (1 if value > limit else 0))
            self.excess_runs[limit] = runs
        return self.excess_runs[limit]


class SeriesIndex:
    """The prefix tables of one RunSeries, valid for its first `len(self.balanced)` points."""

    def __init__(self) -> None:
        self.balanced: list[bool] = []
        self.last_balanced: list[int | None] = []  # [i]: latest balanced k <= i
        self.peak: list[int | None] = []  # [i]: first highest (ratio or 0) among balanced k <= i
        self.losses: dict[str, LossPairs] = {}
        self.motion = MotionTable()

    def truncate(self, start: int) -> None:
        """Forget what was derived from points `start` and later (0: everything, e.g. a new turn)."""
        start = max(0, start)
        if start >= len(self.balanced):
            return
        del self.balanced[start:], self.last_balanced[start:], self.peak[start:]
        for pairs in self.losses.values():
            pairs.truncate(start)
        if self.motion.points and self.motion.points[-1] >= start:  # motion of an earlier point changed
            kept = [(k, v) for k, v in zip(self.motion.points, self.motion.values, strict=True) if k < start]
            limits = list(self.motion.excess_runs)
            self.motion = MotionTable()
            for limit in limits:
                self.motion.excess_runs[limit] = []
            for k, v in kept:
                self.motion.add(k, v)

    def previous_balanced(self, i: int) -> int | None:
        return self.last_balanced[i - 1] if i > 0 else None

    def ratio_peak_before(self, i: int) -> int | None:
        return self.peak[i - 1] if i > 0 else None

    def upto(self, series: RunSeries, i: int) -> SeriesIndex:
        """Extend the tables to cover point i (and every point before it)."""
        points = series.points
        for k in range(len(self.balanced), i + 1):
            ok = series.point_balanced(k)
            before = self.last_balanced[-1] if self.last_balanced else None
            peak = self.peak[-1] if self.peak else None
            if ok and (peak is None or (points[k].weight_ratio or 0.0) > (points[peak].weight_ratio or 0.0)):
                peak = k
            self.balanced.append(ok)
            self.last_balanced.append(k if ok else before)
            self.peak.append(peak)
            for expert in points[k].experts:
                if expert not in self.losses:  # an expert first seen now: its earlier points too
                    pairs = self.losses[expert] = LossPairs()
                    for j in range(k):
                        pairs.add(series, j, expert)
                self.losses[expert].add(series, k, expert)
            if points[k].motion is not None:
                self.motion.add(k, points[k].motion.stats.coarse)
        return self
