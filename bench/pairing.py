"""Interleaved pairs for the benches: ours and the reference take turns, and the figure is the median of the
per-pair ratios with its spread.

Why pairs: on a shared machine the load changes from second to second. Two blocks of runs (all of ours, then
all of the reference) read that drift as a difference between the two; a ratio taken inside each adjacent
pair sees both sides under the same load, and the median of those ratios ignores the pairs a burst hit. The
order inside a pair alternates, so neither side always runs warm after the other.

Every bench under bench/ imports this module (run them as `python bench/NAME.py`: the script's folder is on
the import path).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and range of a list of numbers."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise (every pair was a warm-up?)")
        ordered = sorted(values)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))

    def text(self, spec: str = ".3f") -> str:
        """ "1.020 (IQR 0.990-1.050, range 0.950-1.100, 20 pairs)"."""
        f = lambda v: format(v, spec)  # noqa: E731 - a local formatter
        return (
            f"{f(self.median)} (IQR {f(self.q1)}-{f(self.q3)}, range {f(self.low)}-{f(self.high)}, "
            f"{self.count} pairs)"
        )


@dataclass(frozen=True)
class Pairs:
    """Seconds of each side per pair (warm-ups left out), in pair order."""

    ours: list[float]
    reference: list[float]

    def ratios(self) -> list[float]:
        """ours / reference time per pair (> 1: ours is slower)."""
        return [a / b for a, b in zip(self.ours, self.reference, strict=True)]

    def time_ratio(self) -> Spread:
        return Spread.of(self.ratios())

    def speed_ratio(self) -> Spread:
        """reference / ours time per pair, i.e. our throughput over the reference's (> 1: ours is faster)."""
        return Spread.of([b / a for a, b in zip(self.ours, self.reference, strict=True)])

    def median_ms(self) -> tuple[float, float]:
        return statistics.median(self.ours) * 1e3, statistics.median(self.reference) * 1e3


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_pairs(
    ours: Callable[[], object], reference: Callable[[], object], pairs: int, warmup: int = 1
) -> Pairs:
    """`warmup + pairs` adjacent (ours, reference) runs, the order inside a pair alternating."""
    mine: list[float] = []
    theirs: list[float] = []
    for index in range(warmup + pairs):
        if index % 2 == 0:
            a = seconds(ours)
            b = seconds(reference)
        else:
            b = seconds(reference)
            a = seconds(ours)
        if index >= warmup:
            mine.append(a)
            theirs.append(b)
    return Pairs(mine, theirs)


def ratio_line(label: str, pairs: Pairs, speed: bool = False, goal: str = "") -> str:
    """One printed line: both medians in ms and the median ratio with its spread."""
    ours_ms, ref_ms = pairs.median_ms()
    spread = pairs.speed_ratio() if speed else pairs.time_ratio()
    kind = "speed ours/reference" if speed else "time ours/reference"
    tail = f" (goal {goal})" if goal else ""
    return f"{label}: ours {ours_ms:.2f} ms, reference {ref_ms:.2f} ms; {kind} {spread.text()}{tail}"
