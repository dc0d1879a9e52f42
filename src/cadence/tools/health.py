"""Health rules for LoRA runs on two-expert video models, and the checkpoint recommender.

No library does this; it re-implements by rule what the seed-003 practitioner did by hand on a Wan 2.2 I2V
motion run: compare the high- and low-noise experts' weight magnitudes, their growth between checkpoints
and their LR ratio, and pick the checkpoint before things went wrong. Motion and character LoRAs want
*opposite* balances (motion: high-noise must dominate; character: it must not), hence two presets.

The same `evaluate` runs after training (`cadence analyze`) and live at checkpoints (`HealthMonitor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cadence.config.health import HealthConfig
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.run_folder import MAIN_EXPERT, IntervalStats, interval_stats, last_value

# Rules whose firing means "it was better before": the recommender keeps the checkpoint before them.
DEGRADATION_RULES = ("low_noise_outgrowing", "loss_rising", "weight_ratio_high")


# --------------------------------------------------------------------------------------------- series
@dataclass
class ExpertPoint:
    """One expert at one checkpoint. growth is relative (0.054 = +5.4%) since the previous checkpoint."""

    magnitude: float
    per_block: dict[int, float] = field(default_factory=dict)
    growth: float | None = None
    stats: IntervalStats = field(default_factory=IntervalStats)


@dataclass
class CheckpointPoint:
    step: int
    experts: dict[str, ExpertPoint]
    weight_ratio: float | None = None  # high / low mean |ΔW|
    lr_ratio: float | None = None  # high / low mean LR over the interval
    eval_loss: float | None = None  # run-wide eval_loss, else mean of the experts' eval losses


@dataclass
class RunSeries:
    points: list[CheckpointPoint]

    def index_of(self, step: int) -> int:
        return next(i for i, p in enumerate(self.points) if p.step == step)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def build_series(
    magnitudes: Mapping[int, Mapping[str, MagnitudeSummary]], rows: list[dict[str, Any]]
) -> RunSeries:
    """Join per-checkpoint magnitudes with the metrics of the interval before each checkpoint."""
    points: list[CheckpointPoint] = []
    previous: CheckpointPoint | None = None
    for step in sorted(magnitudes):
        lo = previous.step if previous else 0
        experts: dict[str, ExpertPoint] = {}
        for expert, summary in magnitudes[step].items():
            before = previous.experts.get(expert) if previous else None
            growth = (
                (summary.mean - before.magnitude) / before.magnitude if before and before.magnitude else None
            )
            experts[expert] = ExpertPoint(
                summary.mean, dict(summary.per_block), growth, interval_stats(rows, lo, step, expert)
            )
        high, low = experts.get("high_noise"), experts.get("low_noise")
        eval_loss = last_value(rows, lo, step, "eval_loss")
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
        points.append(point)
        previous = point
    return RunSeries(points)


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class HealthWarning:
    rule: str
    step: int
    expert: str | None
    message: str
    value: float
    threshold: float


@dataclass(frozen=True)
class Recommendation:
    step: int
    reasons: list[str]


# ----------------------------------------------------------------------------------------------- rules
Check = Callable[[RunSeries, int, float], list[HealthWarning]]


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    defaults: dict[str | None, float]  # preset (None = no preset) -> threshold; absent = rule off
    check: Check
    final_only: bool = False  # judged on the latest checkpoint only (a level reached by the end)


def _weight_ratio_low(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    if p.weight_ratio is None or p.weight_ratio >= th:
        return []
    msg = (
        f"high/low |ΔW| ratio {p.weight_ratio:.2f}x is below {th:.2f}x: the low-noise expert is catching up "
        "and tends to tame motion; stop here or lower the low-noise LR"
    )
    return [HealthWarning("weight_ratio_low", p.step, None, msg, p.weight_ratio, th)]


def _weight_ratio_high(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    if p.weight_ratio is None or p.weight_ratio <= th * (1 + 1e-9):
        return []
    msg = (
        f"high/low |ΔW| ratio {p.weight_ratio:.2f}x is above {th:.2f}x: for character/style LoRAs a dominant "
        "high-noise expert memorises poses and backgrounds; lower its LR or keep an earlier checkpoint"
    )
    return [HealthWarning("weight_ratio_high", p.step, None, msg, p.weight_ratio, th)]


def _low_noise_outgrowing(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    high, low = p.experts.get("high_noise"), p.experts.get("low_noise")
    if i == 0 or not high or not low or high.growth is None or low.growth is None:
        return []
    limit = max(high.growth, 0.0) * th
    if low.growth <= 0 or low.growth <= limit:
        return []
    msg = (
        f"since step {s.points[i - 1].step} low-noise |ΔW| grew {low.growth:+.1%}, faster than high-noise "
        f"({high.growth:+.1%}, factor {th:g}): the low-noise expert is overpowering motion; keep the "
        "previous checkpoint or lower the low-noise max LR"
    )
    return [HealthWarning("low_noise_outgrowing", p.step, "low_noise", msg, low.growth, limit)]


def _high_noise_magnitude_low(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    high = p.experts.get("high_noise")
    if not high or high.magnitude >= th:
        return []
    msg = (
        f"high-noise mean |ΔW| {high.magnitude:.6f} is below the target {th:g} for strong motion; "
        "if it stays there, raise the high-noise LR for the next run (the target depends on rank/alpha/LR)"
    )
    return [HealthWarning("high_noise_magnitude_low", p.step, "high_noise", msg, high.magnitude, th)]


def _lr_ratio_low(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    if p.lr_ratio is None or p.lr_ratio >= th * (1 - 1e-9):
        return []
    msg = (
        f"high/low LR ratio {p.lr_ratio:.2f}x is under {th:.2f}x: motion LoRAs need the high-noise expert "
        "to learn faster (3-4x); raise the high-noise LR"
    )
    return [HealthWarning("lr_ratio_low", p.step, None, msg, p.lr_ratio, th)]


def _lr_ratio_high(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    if p.lr_ratio is None or p.lr_ratio <= th * (1 + 1e-9):
        return []
    msg = (
        f"high/low LR ratio {p.lr_ratio:.2f}x is above {th:.2f}x: character/style LoRAs overfit at high "
        "noise; give the high-noise expert the lower LR"
    )
    return [HealthWarning("lr_ratio_high", p.step, None, msg, p.lr_ratio, th)]


def _loss_rising(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    if i == 0:
        return []
    out = []
    p, prev = s.points[i], s.points[i - 1]
    for expert, now in p.experts.items():
        before = prev.experts.get(expert)
        a, b = (before.stats if before else None), now.stats
        if not a or a.loss_mean is None or b.loss_mean is None or a.loss_mean <= 0:
            continue
        rise = (b.loss_mean - a.loss_mean) / a.loss_mean * 100
        if rise <= th or not _significant(a, b):
            continue
        msg = (
            f"{expert} loss mean {b.loss_mean:.4f} over steps {prev.step + 1}-{p.step} is {rise:+.1f}% above "
            f"the previous interval ({a.loss_mean:.4f}), more than {th:g}%: training is diverging"
        )
        out.append(HealthWarning("loss_rising", p.step, expert, msg, rise, th))
    return out


def _significant(a: IntervalStats, b: IntervalStats) -> bool:
    """The rise exceeds two standard errors when both intervals have a spread (noise is not a trend)."""
    if a.loss_std is None or b.loss_std is None or a.loss_mean is None or b.loss_mean is None:
        return True
    se = math.sqrt(a.loss_std**2 / a.loss_count + b.loss_std**2 / b.loss_count)
    return b.loss_mean - a.loss_mean > 2 * se


def _gradient_unstable(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    out = []
    for expert, e in p.experts.items():
        value = e.stats.grad_stability
        if value is not None and value < th:
            msg = (
                f"{expert} gradient stability {value:.3f} is below {th:g} (0.5 = random signs): updates "
                "disagree step to step; lower the LR or raise the batch size"
            )
            out.append(HealthWarning("gradient_unstable", p.step, expert, msg, value, th))
    return out


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule("weight_ratio_low", "high/low |ΔW| ratio below threshold", {"motion": 1.5}, _weight_ratio_low),
        Rule(
            "weight_ratio_high", "high/low |ΔW| ratio above threshold", {"character": 1.0}, _weight_ratio_high
        ),
        Rule(
            "low_noise_outgrowing",
            "low-noise growth > high-noise growth x factor",
            {"motion": 1.0},
            _low_noise_outgrowing,
        ),
        Rule(
            "high_noise_magnitude_low",
            "high-noise mean |ΔW| below target at the latest checkpoint",
            {"motion": 0.008},
            _high_noise_magnitude_low,
            final_only=True,
        ),
        Rule("lr_ratio_low", "high/low LR ratio below threshold", {"motion": 3.0}, _lr_ratio_low),
        Rule("lr_ratio_high", "high/low LR ratio above threshold", {"character": 1.0}, _lr_ratio_high),
        Rule(
            "loss_rising",
            "interval loss mean above the previous interval by more than threshold %",
            {None: 10.0, "motion": 10.0, "character": 10.0},
            _loss_rising,
        ),
        Rule(
            "gradient_unstable",
            "interval gradient stability below threshold",
            {None: 0.45, "motion": 0.45, "character": 0.45},
            _gradient_unstable,
        ),
    )
}


def active_thresholds(cfg: HealthConfig) -> dict[str, float]:
    """Rule id -> threshold after the preset and the user's overrides (null switches a rule off)."""
    active = {rid: r.defaults[cfg.preset] for rid, r in RULES.items() if cfg.preset in r.defaults}
    for rid, value in cfg.thresholds.items():
        if value is None:
            active.pop(rid, None)
        else:
            active[rid] = float(value)
    return active


def evaluate(series: RunSeries, cfg: HealthConfig) -> list[HealthWarning]:
    """Every warning of every active rule at every checkpoint (final-only rules at the latest one)."""
    warnings: list[HealthWarning] = []
    last = len(series.points) - 1
    thresholds = active_thresholds(cfg)
    for i in range(len(series.points)):
        for rid, th in thresholds.items():
            rule = RULES[rid]
            if not rule.final_only or i == last:
                warnings.extend(rule.check(series, i, th))
    return warnings


def should_stop(warnings: Iterable[HealthWarning], cfg: HealthConfig) -> str | None:
    """The reason to stop (the earliest warning of a `stop_on` rule), or None."""
    for w in sorted(warnings, key=lambda w: w.step):
        if w.rule in cfg.stop_on:
            return f"health rule {w.rule} fired at step {w.step}: {w.message}"
    return None


# ------------------------------------------------------------------------------------------ recommender
def recommend(
    series: RunSeries, warnings: list[HealthWarning], cfg: HealthConfig | None = None
) -> list[Recommendation]:
    """Checkpoints worth keeping, each with the reasons in words, most important first."""
    if not series.points:
        return []
    picks: list[tuple[int, str]] = []
    stop_rules = set(cfg.stop_on) if cfg and cfg.stop_on else set(DEGRADATION_RULES)
    picks.extend(_before_first_degradation(series, warnings, stop_rules))
    picks.extend(_lowest_eval(series))
    if cfg is not None and cfg.preset == "motion":
        picks.extend(_best_motion_balance(series, warnings))
    if not picks:
        last = series.points[-1].step
        flagged = any(w.step == last for w in warnings)
        picks.append(
            (
                last,
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


def _before_first_degradation(
    series: RunSeries, warnings: list[HealthWarning], rules: set[str]
) -> list[tuple[int, str]]:
    bad = sorted((w for w in warnings if w.rule in rules), key=lambda w: w.step)
    if not bad:
        return []
    first = bad[0]
    index = series.index_of(first.step)
    if index == 0:
        return []
    return [
        (
            series.points[index - 1].step,
            f"last checkpoint before {first.rule} fired at step {first.step} ({first.message})",
        )
    ]


def _lowest_eval(series: RunSeries) -> list[tuple[int, str]]:
    scored = [p for p in series.points if p.eval_loss is not None]
    if not scored:
        return []
    best = min(scored, key=lambda p: p.eval_loss)  # type: ignore[arg-type,return-value]
    return [
        (best.step, f"lowest eval loss ({best.eval_loss:.5f}) of {len(scored)} checkpoints with eval loss")
    ]


def _best_motion_balance(series: RunSeries, warnings: list[HealthWarning]) -> list[tuple[int, str]]:
    outgrown = {w.step for w in warnings if w.rule == "low_noise_outgrowing"}
    healthy = [
        p
        for p in series.points
        if p.weight_ratio is not None
        and p.step not in outgrown
        and (h := p.experts.get("high_noise")) is not None
        and h.growth is not None
        and h.growth > 0
    ]
    if not healthy:
        return []
    best = max(healthy, key=lambda p: p.weight_ratio)  # type: ignore[arg-type,return-value]
    return [
        (
            best.step,
            f"highest high/low |ΔW| ratio ({best.weight_ratio:.2f}x) among checkpoints where the "
            "high-noise expert was still growing and the low-noise expert did not outgrow it (motion)",
        )
    ]


# ------------------------------------------------------------------------------------------ live checks
@dataclass
class HealthResult:
    """The outcome of one live check: new warnings at this step, a stop reason, the checkpoint to keep."""

    step: int
    warnings: list[HealthWarning]
    stop_reason: str | None
    recommendations: list[Recommendation]

    def metrics_fields(self) -> dict[str, Any]:
        """Fields for the metrics JSONL line of this step."""
        fields: dict[str, Any] = {"health_warnings": sorted({w.rule for w in self.warnings})}
        if self.stop_reason:
            fields["health_stop"] = self.stop_reason
        return fields


class HealthMonitor:
    """Runs the rules during training. The trainer passes magnitudes (from its live networks or the saved
    files) and the metrics rows so far at each check; the monitor keeps the magnitudes history."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self.magnitudes: dict[int, dict[str, MagnitudeSummary]] = {}

    def due(self, step: int, saving: bool) -> bool:
        return saving if self.cfg.every is None else step % self.cfg.every == 0

    def check(
        self, step: int, magnitudes: Mapping[str, MagnitudeSummary], rows: list[dict[str, Any]]
    ) -> HealthResult:
        self.magnitudes[step] = dict(magnitudes)
        series = build_series(self.magnitudes, rows)
        warnings = evaluate(series, self.cfg)
        current = [w for w in warnings if w.step == step]
        return HealthResult(
            step, current, should_stop(current, self.cfg), recommend(series, warnings, self.cfg)
        )
