"""The checkpoint recommender: which checkpoints of a run to keep, each with its reasons in words.

Shared by `cadence analyze` and the live checks (which protect the pick from pruning). It reads the rules'
warnings, never re-judges them: the checkpoint before the first turn for the worse, the lowest eval loss,
and for motion LoRAs the best expert balance. What it needs of each checkpoint is kept in prefix form
(`RecommendIndex`), so the live checks extend it by one checkpoint per check instead of re-reading the run.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from cadence.config.health import HealthConfig
from cadence.tools.health_series import HealthWarning, RunSeries

# Rules whose firing means "it was better before": the recommender keeps the checkpoint before them.
DEGRADATION_RULES = (
    "low_noise_outgrowing",
    "loss_rising",
    "weight_ratio_high",
    "weight_ratio_low",
    "motion_tame",
    "motion_excess",
)


@dataclass(frozen=True)
class Recommendation:
    step: int
    reasons: list[str]


@dataclass
class RecommendIndex:
    """Per checkpoint, in prefix form: the first warning of a degradation rule so far, the lowest eval loss
    so far (and how many checkpoints had one), the best motion balance so far."""

    cfg: HealthConfig | None = None
    first_bad: list[HealthWarning | None] = field(default_factory=list)
    best_eval: list[int | None] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)
    best_balance: list[int | None] = field(default_factory=list)

    @property
    def stop_rules(self) -> set[str]:
        cfg = self.cfg
        return set(cfg.stop_on) if cfg and cfg.stop_on else set(DEGRADATION_RULES)

    def truncate(self, start: int) -> None:
        for table in (self.first_bad, self.best_eval, self.scored, self.best_balance):
            del table[start:]

    def extend(self, series: RunSeries, per_point: Sequence[Sequence[HealthWarning]]) -> None:
        """Cover every point of `per_point` (that point's warnings, in rule order)."""
        rules = self.stop_rules
        for i in range(len(self.first_bad), len(per_point)):
            point, warnings = series.points[i], per_point[i]
            bad = self.first_bad[-1] if self.first_bad else None
            if bad is None:
                bad = next((w for w in warnings if w.rule in rules), None)
            self.first_bad.append(bad)
            best = self.best_eval[-1] if self.best_eval else None
            scored = self.scored[-1] if self.scored else 0
            if point.eval_loss is not None:
                scored += 1
                if best is None or point.eval_loss < series.points[best].eval_loss:  # type: ignore[operator]
                    best = i
            self.best_eval.append(best)
            self.scored.append(scored)
            balance = self.best_balance[-1] if self.best_balance else None
            outgrown = any(w.rule == "low_noise_outgrowing" for w in warnings)
            if (
                point.weight_ratio is not None
                and not outgrown
                and series.balanced(i)
                and _high_noise_growing(series, i)
                and (balance is None or point.weight_ratio > series.points[balance].weight_ratio)  # type: ignore[operator]
            ):
                balance = i
            self.best_balance.append(balance)

    def recommend(self, series: RunSeries, last_warnings: Sequence[HealthWarning]) -> list[Recommendation]:
        """Checkpoints worth keeping, most important first (`last_warnings`: every warning at the latest
        checkpoint, final-only rules included)."""
        if not series.points:
            return []
        last = len(series.points) - 1
        picks: list[tuple[int, str]] = []
        first = self.first_bad[last]
        if first is not None:
            latest = first.from_step if first.from_step is not None else first.step - 1
            j = bisect.bisect_right(series.points, latest, key=lambda p: p.step) - 1
            k = series.tables(last).last_balanced[j] if j >= 0 else None
            if k is not None:
                picks.append(
                    (
                        series.points[k].step,
                        f"last checkpoint before {first.rule} fired at step {first.step} ({first.message})",
                    )
                )
        best = self.best_eval[last]
        if best is not None:
            p = series.points[best]
            scored = self.scored[last]
            picks.append(
                (p.step, f"lowest eval loss ({p.eval_loss:.5f}) of {scored} checkpoints with eval loss")
            )
        if self.cfg is not None and self.cfg.preset == "motion" and self.best_balance[last] is not None:
            p = series.points[self.best_balance[last]]  # type: ignore[index]
            picks.append(
                (
                    p.step,
                    f"highest high/low |ΔW| ratio ({p.weight_ratio:.2f}x) among checkpoints where both experts "
                    "had trained evenly, the high-noise expert was still growing and the low-noise expert did "
                    "not outgrow it (motion)",
                )
            )
        if not picks:
            flagged = any(w.step == series.points[last].step for w in last_warnings)
            picks.append(
                (
                    series.points[last].step,
                    "latest checkpoint; "
                    + (
                        "its warnings concern the whole run, not a turn for the worse"
                        if flagged
                        else "no health rule fired against it"
                    ),
                )
            )
        merged: dict[int, list[str]] = {}
        for step, reason in picks:
            merged.setdefault(step, []).append(reason)
        return [Recommendation(step, reasons) for step, reasons in merged.items()]


def recommend(
    series: RunSeries, warnings: list[HealthWarning], cfg: HealthConfig | None = None
) -> list[Recommendation]:
    """Checkpoints worth keeping, each with the reasons in words, most important first."""
    if not series.points:
        return []
    where = {p.step: i for i, p in enumerate(series.points)}
    per_point: list[list[HealthWarning]] = [[] for _ in series.points]
    for w in sorted(warnings, key=lambda w: w.step):  # stable: a checkpoint's warnings keep their order
        if w.step in where:
            per_point[where[w.step]].append(w)
    index = RecommendIndex(cfg)
    index.extend(series, per_point)
    return index.recommend(series, per_point[-1])


def _high_noise_growing(series: RunSeries, i: int) -> bool:
    j = series.previous_balanced(i)
    growth = series.span_growth(j, i, "high_noise") if j is not None else None
    return growth is not None and growth[0] > 0
