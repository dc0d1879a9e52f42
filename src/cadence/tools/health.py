"""Health rules for LoRA runs on two-expert video models, and the live checks that run them in training.

No library does this; it re-implements by rule what the seed-003 practitioner did by hand on a Wan 2.2 I2V
motion run (the rules: `health_rules`, `health_motion`; the recommender: `health_recommend`).

The same `evaluate` runs after training (`cadence analyze`) and live at checkpoints (`HealthMonitor`).
Both cost in proportion to the run (issue 23): a rule judges a checkpoint from the series' prefix tables,
`Evaluation` keeps each checkpoint's verdicts and re-judges only the checkpoints that changed (a new one;
the latest ones when their sample motion arrives), and the monitor is fed each metrics row once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cadence.config.health import HealthConfig
from cadence.metrics.motion import MotionStats
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.health_recommend import DEGRADATION_RULES, Recommendation, RecommendIndex, recommend
from cadence.tools.health_rules import (
    LOSS_RISE_Z,
    OUTGROW_HORIZON,
    OUTGROW_NEAR_FLOOR,
    RATIO_FLOOR,
    RULES,
    Rule,
    active_thresholds,
    heading_to_floor,
)
from cadence.tools.health_series import HealthWarning, RunSeries, SeriesBuilder, build_series
from cadence.tools.sample_motion import StepMotion

__all__ = [
    "DEGRADATION_RULES",
    "LOSS_RISE_Z",
    "OUTGROW_HORIZON",
    "OUTGROW_NEAR_FLOOR",
    "RATIO_FLOOR",
    "RULES",
    "Evaluation",
    "HealthConfig",
    "HealthMonitor",
    "HealthWarning",
    "Recommendation",
    "Rule",
    "RunSeries",
    "active_thresholds",
    "build_series",
    "evaluate",
    "heading_to_floor",
    "recommend",
]

# Rules on sample motion: the samples of a checkpoint are written after its live check, so their verdict
# on that checkpoint comes at a later check; live checks report such a warning once, when it appears.
MOTION_RULES = ("motion_tame", "motion_excess", "low_noise_outgrowing")


class Evaluation:
    """The warnings of every active rule at every checkpoint of a series, kept per checkpoint. `sync`
    re-judges the checkpoints from the first one the series says changed (`RunSeries.first_changed`); the
    rules only read checkpoints up to the one they judge, so the verdicts before it stand."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self.thresholds = active_thresholds(cfg)
        self.per_point: list[list[HealthWarning]] = []  # final-only rules left out

    def sync(self, series: RunSeries) -> int:
        """Bring the verdicts up to date; returns the first checkpoint re-judged (len: none was)."""
        start = min(
            series.first_changed if series.first_changed is not None else len(self.per_point),
            len(self.per_point),
        )
        series.first_changed = None
        del self.per_point[start:]
        for i in range(start, len(series.points)):
            self.per_point.append(self.judge(series, i, finished=False))
        return start

    def judge(self, series: RunSeries, i: int, finished: bool) -> list[HealthWarning]:
        """Every active rule at checkpoint i, in rule order; final-only rules only when `finished`."""
        out: list[HealthWarning] = []
        for rid, th in self.thresholds.items():
            if not RULES[rid].final_only or finished:
                out.extend(RULES[rid].check(series, i, th, self.thresholds))
        return out


def evaluate(series: RunSeries, cfg: HealthConfig, finished: bool = True) -> list[HealthWarning]:
    """Every warning of every active rule at every checkpoint; final-only rules at the latest one, and only
    for a finished run (`finished=False` in live checks: mid-run they would only say "not there yet")."""
    evaluation = Evaluation(cfg)
    series.first_changed = 0
    evaluation.sync(series)
    if finished and series.points:
        evaluation.per_point[-1] = evaluation.judge(series, len(series.points) - 1, finished=True)
    return [w for warnings in evaluation.per_point for w in warnings]


def should_stop(warnings: Iterable[HealthWarning], cfg: HealthConfig) -> str | None:
    """The reason to stop (the earliest warning of a `stop_on` rule), or None."""
    for w in sorted(warnings, key=lambda w: w.step):
        if w.rule in cfg.stop_on:
            return f"health rule {w.rule} fired at step {w.step}: {w.message}"
    return None


# ------------------------------------------------------------------------------------------ live checks
@dataclass
class HealthResult:
    """The outcome of one live check: new warnings at this step, a stop reason, the checkpoint to keep."""

    step: int
    warnings: list[HealthWarning]
    stop_reason: str | None
    recommendations: list[Recommendation]
    # the latest checkpoint where both experts had their turns: a later firing recommends it, so it must
    # survive pruning until a newer one takes its place
    latest_balanced: int | None = None

    def metrics_fields(self) -> dict[str, Any]:
        """Fields for the metrics JSONL line of this step."""
        fields: dict[str, Any] = {"health_warnings": sorted({w.rule for w in self.warnings})}
        if self.stop_reason:
            fields["health_stop"] = self.stop_reason
        return fields


class HealthMonitor:
    """Runs the rules during training. The trainer passes magnitudes (from its live networks or the saved
    files) at each check and the sample motion measured so far; it feeds the metrics rows once each
    (`feed`), or passes all rows so far to `check` (read again from the start on every call: tests, tools).
    The monitor keeps the magnitudes history, the series and its verdicts, and which motion warnings it has
    reported."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self.magnitudes: dict[int, dict[str, MagnitudeSummary]] = {}
        # motion-rule warnings already raised; None (a resume from a state that did not record them): the
        # first check takes those it finds at earlier steps as raised, so none is raised twice
        self.reported: set[tuple[str, int, str | None]] | None = set()
        self._builder: SeriesBuilder | None = None  # None: built from magnitudes + rows when first fed
        self._evaluation = Evaluation(cfg)
        self._recommend = RecommendIndex(cfg)
        self._judged = 0  # points judged at the previous check (its latest one may have been held back)

    def due(self, step: int, saving: bool) -> bool:
        return saving if self.cfg.every is None else step % self.cfg.every == 0

    def feed(self, rows: Iterable[dict[str, Any]]) -> None:
        """Metrics rows in step order; the first call (after a start or resume) also rebuilds the series
        of the checkpoints in `magnitudes`. Rows already fed are skipped."""
        if self._builder is None:
            self._builder = SeriesBuilder.of(self.magnitudes, list(rows))
            self._evaluation = Evaluation(self.cfg)
            self._recommend = RecommendIndex(self.cfg)
            self._judged = 0
            return
        for row in rows:
            self._builder.add_row(row)

    @property
    def series(self) -> RunSeries | None:
        return self._builder.series if self._builder is not None else None

    def check(
        self,
        step: int,
        magnitudes: Mapping[str, MagnitudeSummary],
        rows: list[dict[str, Any]] | None = None,
        motion: Mapping[int, StepMotion] | None = None,
        reference: MotionStats | None = None,
        changed: set[int] | None = None,
    ) -> HealthResult:
        """Judge the checkpoint at `step` (and earlier ones the newly measured sample motion concerns).
        `rows`: every row so far, or None when they were fed; `changed`: the sampled steps whose motion
        changed since the last call, when known."""
        self.magnitudes[step] = dict(magnitudes)
        points = self._builder.series.points if self._builder is not None else []
        if points and step <= points[-1].step:  # a checkpoint judged again: the series is rebuilt
            self._builder = None
        if self._builder is None:
            self.feed(rows or [])  # its series holds this checkpoint already
        else:
            if rows is not None:
                self.feed(rows)
            self._builder.add_checkpoint(step, self.magnitudes[step])
        return self._judge(step, motion, reference, changed, new_checkpoint=True)

    def review(
        self,
        step: int,
        rows: list[dict[str, Any]] | None,
        motion: Mapping[int, StepMotion] | None,
        reference: MotionStats | None,
        changed: set[int] | None = None,
    ) -> HealthResult | None:
        """Re-judge the checkpoints checked so far with sample motion that arrived after their checks (their
        samples are written after the check), so a motion rule can stop the run at once; None before the
        first check."""
        if not self.magnitudes:
            return None
        self.feed(rows or [])
        return self._judge(step, motion, reference, changed, new_checkpoint=False)

    def _judge(
        self,
        step: int,
        motion: Mapping[int, StepMotion] | None,
        reference: MotionStats | None,
        changed: set[int] | None,
        new_checkpoint: bool,
    ) -> HealthResult:
        assert self._builder is not None
        self._builder.set_motion(motion or {}, reference, changed)
        series = self._builder.series
        start = self._evaluation.sync(series)
        per_point = self._evaluation.per_point
        last = len(series.points) - 1
        held = self._held_back(series)
        # the previous latest point may have been held back: its warnings are looked at again
        scan = min(start, max(self._judged - 1, 0))
        self._judged = len(series.points)
        self._recommend.truncate(scan)
        self._recommend.extend(series, per_point[:last] + [held])
        if self.reported is None:
            self.reported = {(w.rule, w.step, w.expert) for ws in per_point for w in ws if w.step < step}
            scan = 0
        current = []
        for i in range(scan, last + 1):
            for w in held if i == last else per_point[i]:
                key = (w.rule, w.step, w.expert)
                if w.rule in MOTION_RULES:
                    if key not in self.reported:
                        self.reported.add(key)
                        current.append(w)
                elif new_checkpoint and w.step == step:
                    current.append(w)
        balanced = last if series.balanced(last) else series.previous_balanced(last)
        return HealthResult(
            step,
            current,
            should_stop(current, self.cfg),
            self._recommend.recommend(series, held),
            series.points[balanced].step if balanced is not None else None,
        )

    def _held_back(self, series: RunSeries) -> list[HealthWarning]:
        """The latest checkpoint's warnings; while its samples may still come, its motion rules wait."""
        latest = self._evaluation.per_point[-1]
        if series.sampled and series.points[-1].motion is None:
            return [w for w in latest if w.rule not in MOTION_RULES]
        return latest
