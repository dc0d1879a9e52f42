"""Health rules on the motion of the samples: seed 003's "later samples became tame" and the users' "motion
too fast", as tests on the coarse motion (cadence.metrics.motion) of the samples taken at checkpoints.

No library does this. The tame test follows `loss_rising`'s design, because a run compares tens of
checkpoints and a single-checkpoint test would fire on noise: the last **two** sampled checkpoints must
both sit the stated fraction below the run's earlier peak (the highest mean of two consecutive earlier
sampled checkpoints), and the drop must clear MOTION_DROP_Z noise units. The noise unit is measured on
the run's own series (the spread of the change from one sampled checkpoint to the next, in log motion),
never below MOTION_NOISE_FLOOR, since the same prompts and seeds at every checkpoint still give samples
whose motion wanders as the weights move. The rates this gives on simulated runs are in docs/analyze.md
(bench/health_false_alarms.py measures them). Both rules read the sampled checkpoints through the series'
motion table (`series_index.MotionTable`: peak pair, squared steps and median step so far), so a rule at
a checkpoint costs the same however many were sampled before it.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping

from cadence.tools.health_series import HealthWarning, RunSeries
from cadence.tools.series_index import MotionTable

MOTION_DROP_Z = 4.0
MOTION_NOISE_FLOOR = 0.05  # relative: motion never counts as steadier than +-5% per checkpoint
MOTION_MIN_POINTS = 4  # sampled checkpoints: the last two plus at least one earlier pair
_EPS = 1e-6  # diag/s; a frozen sample's motion (0) enters the logs as this


def motion_points(s: RunSeries, i: int) -> tuple[MotionTable, int]:
    """The series' motion table and how many of its sampled checkpoints lie at or before point i."""
    table = s.tables(i).motion
    return table, bisect.bisect_right(table.points, i)


def log_noise(values: list[float]) -> float:
    """The spread of one checkpoint's log motion around the run's level, from the changes between successive
    sampled checkpoints (the step into the last pair left out: that is the drop under test). The larger of
    their root mean square / sqrt 2, widened by 1 + 0.5/sqrt(n) because an estimate from few changes is
    uncertain, and of a median-based estimate over all changes (robust to one odd checkpoint), so a noise
    estimate that came out low by chance does not turn noise into a drop; never below MOTION_NOISE_FLOOR."""
    logs = [math.log(max(v, _EPS)) for v in values]
    steps = [b - a for a, b in zip(logs, logs[1:], strict=False)]
    if not steps:
        return MOTION_NOISE_FLOOR
    calm = steps[:-2] + steps[-1:]
    rms = math.sqrt(sum(d * d for d in calm) / len(calm) / 2) * (1 + 0.5 / math.sqrt(len(calm)))
    robust = 1.4826 * statistics.median(abs(d) for d in steps) / math.sqrt(2)
    return max(rms, robust, MOTION_NOISE_FLOOR)


def table_noise(table: MotionTable, m: int) -> float:
    """`log_noise` of the table's first m values (m >= 2), from its prefix sums and running median."""
    steps = m - 1
    calm = steps - 1 if steps >= 2 else 1  # the step into the last pair is left out
    last = math.log(max(table.values[m - 1], _EPS)) - math.log(max(table.values[m - 2], _EPS))
    total = (table.sumsq[steps - 2] if steps >= 2 else 0.0) + last * last
    rms = math.sqrt(total / calm / 2) * (1 + 0.5 / math.sqrt(calm))
    robust = 1.4826 * table.abs_median[steps - 1] / math.sqrt(2)
    return max(rms, robust, MOTION_NOISE_FLOOR)


def _log_mean(*values: float) -> float:
    return sum(math.log(max(v, _EPS)) for v in values) / len(values)


def motion_tame(s: RunSeries, i: int, th: float, _active: Mapping[str, float]) -> list[HealthWarning]:
    """The samples of the last two sampled checkpoints both moved more than `th` (a fraction) less than
    the earlier peak pair, by >= MOTION_DROP_Z noise units; with a data reference, also less than the
    training clips move (a fall from "crazy" motion to the data's own is the LoRA settling, not taming)."""
    if s.points[i].motion is None:
        return []
    table, m = motion_points(s, i)
    if m < MOTION_MIN_POINTS:
        return []
    values = table.values
    a, b = values[m - 2], values[m - 1]
    best = table.pair_best[m - 4]  # the earlier pairs: (k, k + 1) for k <= m - 4
    peak = (values[best] + values[best + 1]) / 2
    limit = peak * (1 - th)
    if peak <= 0 or a >= limit or b >= limit:
        return []
    reference = s.reference.coarse if s.reference is not None and s.reference.coarse > 0 else None
    if reference is not None and (a + b) / 2 >= reference:
        return []
    z = (_log_mean(values[best], values[best + 1]) - _log_mean(a, b)) / table_noise(table, m)
    if z < MOTION_DROP_Z:
        return []
    fraction = (a + b) / 2 / peak
    of_data = f", {(a + b) / 2 / reference:.0%} of the training clips'" if reference else ""
    step_a, step_b = s.points[table.points[best]].step, s.points[table.points[best + 1]].step
    msg = (
        f"sample coarse motion fell to {a:.4f}, then {b:.4f} diag/s: {fraction:.0%} of its peak "
        f"{peak:.4f} (steps {step_a}-{step_b}){of_data}, more than {th:.0%} below it ({z:.1f} noise units): "
        "the samples became tame (seed 003); keep an earlier checkpoint, and next run give the low-noise "
        "expert a lower LR or stop earlier"
    )
    before = s.points[table.points[m - 3]].step  # the last sampled checkpoint before the two tame ones
    return [HealthWarning("motion_tame", s.points[i].step, None, msg, fraction, th, before)]


def motion_excess(s: RunSeries, i: int, th: float, _active: Mapping[str, float]) -> list[HealthWarning]:
    """The samples of the last two sampled checkpoints both move more than `th` times the training clips'
    coarse motion: the "motion too fast" complaint. Needs the data's reference."""
    if s.points[i].motion is None or s.reference is None or s.reference.coarse <= 0:
        return []
    reference = s.reference.coarse
    table, m = motion_points(s, i)
    values, limit = table.values, th * reference
    if m < 2 or any(v <= limit for v in values[m - 2 : m]):
        return []
    start = m - table.runs_above(limit)[m - 1]  # the first of the sampled checkpoints above it in a row
    a, b = values[m - 2] / reference, values[m - 1] / reference
    msg = (
        f"sample coarse motion is {a:.2f}x, then {b:.2f}x the training clips' ({reference:.4f} diag/s), "
        f"above {th:g}x: motion too fast; keep an earlier checkpoint or lower the LR (check the samples' "
        "frame rate and the training clips' frame plan first)"
    )
    before = s.points[table.points[start - 1]].step if start > 0 else -1  # -1: no calmer checkpoint before it
    return [HealthWarning("motion_excess", s.points[i].step, None, msg, b, th, before)]
