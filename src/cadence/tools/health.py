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
from dataclasses import dataclass
from typing import Any

from cadence.config.health import HealthConfig
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.health_series import CheckpointPoint, RunSeries, build_series
from cadence.tools.run_folder import IntervalStats

__all__ = ["HealthConfig", "HealthMonitor", "RunSeries", "build_series", "evaluate", "recommend"]

# Rules whose firing means "it was better before": the recommender keeps the checkpoint before them.
DEGRADATION_RULES = ("low_noise_outgrowing", "loss_rising", "weight_ratio_high", "weight_ratio_low")
# A loss rise must hold over two intervals and clear this many standard errors: with tens of checkpoint
# comparisons per run, a two-SE test on one interval flagged noise in most runs (152 of 200 simulated
# stationary runs of 30 checkpoints); at 4 SE on pairs, 1-2 of 200, while a sustained +30% is still caught.
LOSS_RISE_Z = 4.0


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class HealthWarning:
    rule: str
    step: int
    expert: str | None
    message: str
    value: float
    threshold: float
    from_step: int | None = (
        None  # the checkpoint where what the rule saw began (loss_rising: before the rise)
    )


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
    """The ratio fell below the threshold after having reached it (seed 003: "stop if it drops below").
    Only checkpoints where both experts had their share count; a run still climbing towards the threshold
    has not degraded."""
    p = s.points[i]
    if p.weight_ratio is None or p.weight_ratio >= th or not s.balanced(i):
        return []
    earlier = [q for k, q in enumerate(s.points[:i]) if s.balanced(k) and (q.weight_ratio or 0.0) >= th]
    if not earlier:
        return []
    peak = max(earlier, key=lambda q: q.weight_ratio or 0.0)
    msg = (
        f"high/low |ΔW| ratio fell to {p.weight_ratio:.2f}x, below {th:.2f}x (it was {peak.weight_ratio:.2f}x "
        f"at step {peak.step}): the low-noise expert is catching up and tends to tame motion; keep an "
        "earlier checkpoint or lower the low-noise LR"
    )
    return [HealthWarning("weight_ratio_low", p.step, None, msg, p.weight_ratio, th)]


def _weight_ratio_unreached(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    """The run ends with the ratio below the threshold and never reached it (seed 003's "too weak" 1.19x):
    judged on the latest balanced checkpoint, so it describes the run, never a turn for the worse."""
    balanced = [k for k in range(i + 1) if s.balanced(k) and s.points[k].weight_ratio is not None]
    if not balanced:
        return []
    last = s.points[balanced[-1]]
    best = max((s.points[k] for k in balanced), key=lambda q: q.weight_ratio or 0.0)
    if (best.weight_ratio or 0.0) >= th:
        return []
    msg = (
        f"high/low |ΔW| ratio is {last.weight_ratio:.2f}x at step {last.step} and never reached {th:.2f}x "
        f"(best {best.weight_ratio:.2f}x at step {best.step}): the high-noise expert never dominated, so motion "
        "tends to be tame (seed 003 called 1.19x too weak); give the high-noise expert the higher LR next run"
    )
    return [
        HealthWarning("weight_ratio_unreached", s.points[i].step, None, msg, last.weight_ratio or 0.0, th)
    ]


def _weight_ratio_high(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    p = s.points[i]
    if p.weight_ratio is None or p.weight_ratio <= th * (1 + 1e-9) or not s.balanced(i):
        return []
    msg = (
        f"high/low |ΔW| ratio {p.weight_ratio:.2f}x is above {th:.2f}x: for character/style LoRAs a dominant "
        "high-noise expert memorises poses and backgrounds; lower its LR or keep an earlier checkpoint"
    )
    return [HealthWarning("weight_ratio_high", p.step, None, msg, p.weight_ratio, th)]


def _low_noise_outgrowing(s: RunSeries, i: int, th: float) -> list[HealthWarning]:
    """Growth per own training step between two balanced checkpoints, so a checkpoint interval that held
    only one expert's turn is not read as the other one standing still, nor one turn compared with an
    earlier (faster) turn of the other expert."""
    j = s.previous_balanced(i) if s.balanced(i) else None
    if j is None:
        return []
    high, low = s.span_growth(j, i, "high_noise"), s.span_growth(j, i, "low_noise")
    if high is None or low is None:
        return []
    (g_high, n_high), (g_low, n_low) = high, low
    if not n_high and not n_low:  # the metrics name no expert: compare the growth over the span as it is
        n_high = n_low = 1
    if not n_high or not n_low:
        return []
    rate_high, rate_low = g_high / n_high, g_low / n_low
    limit = max(rate_high, 0.0) * th
    if rate_low <= 0 or rate_low <= limit * (1 + 1e-9):
        return []
    steps = "" if n_high == n_low else f" per own step ({n_high} high-noise vs {n_low} low-noise steps)"
    msg = (
        f"since step {s.points[j].step} low-noise |ΔW| grew {g_low:+.1%}, faster than high-noise "
        f"({g_high:+.1%}){steps}, factor {th:g}: the low-noise expert is overpowering motion; keep the "
        "previous checkpoint or lower the low-noise max LR"
    )
    return [HealthWarning("low_noise_outgrowing", s.points[i].step, "low_noise", msg, rate_low, limit)]


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
    """An expert's last two intervals (among those it trained in) each sit more than th% above the best
    level it reached before them (the lowest mean of two consecutive earlier intervals), and the pooled
    last two exceed it by ≥ LOSS_RISE_Z standard errors. Pairs, not single intervals, on both sides: one
    unlucky interval is not a trend."""
    out = []
    p = s.points[i]
    for expert in p.experts:
        where = [k for k, q in enumerate(s.points[: i + 1]) if _has_losses(q, expert)]
        trained = [s.points[k].experts[expert].stats for k in where]
        if not _has_losses(p, expert) or len(trained) < 4:
            continue
        prev, cur = trained[-2], trained[-1]
        rise_start = s.points[where[-2] - 1].step if where[-2] > 0 else 0  # the checkpoint before it rose
        pairs = zip(trained[:-3], trained[1:-2], strict=True)
        ref = min((_pool(a, b) for a, b in pairs), key=lambda x: x.loss_mean)  # type: ignore[arg-type,return-value]
        limit = ref.loss_mean * (1 + th / 100)  # type: ignore[operator]
        if ref.loss_mean <= 0 or prev.loss_mean <= limit or cur.loss_mean <= limit:  # type: ignore[operator]
            continue
        pooled = _pool(prev, cur)
        z = _z(ref, pooled)
        if z < LOSS_RISE_Z:
            continue
        rise = (pooled.loss_mean / ref.loss_mean - 1) * 100  # type: ignore[operator]
        msg = (
            f"{expert} loss mean stayed more than {th:g}% above its best earlier level {ref.loss_mean:.4f} over its last "
            f"two intervals ({prev.loss_mean:.4f}, then {cur.loss_mean:.4f}; {rise:+.1f}%, {z:.1f} standard "
            "errors): training is diverging"
        )
        out.append(HealthWarning("loss_rising", p.step, expert, msg, rise, th, from_step=rise_start))
    return out


def _has_losses(p: CheckpointPoint, expert: str) -> bool:
    e = p.experts.get(expert)
    return e is not None and e.stats.loss_std is not None and e.stats.loss_count >= 2


def _pool(a: IntervalStats, b: IntervalStats) -> IntervalStats:
    """Mean and sample std of the union of two intervals' losses."""
    n = a.loss_count + b.loss_count
    mean = (a.loss_mean * a.loss_count + b.loss_mean * b.loss_count) / n  # type: ignore[operator]
    ss = sum(
        (x.loss_count - 1) * x.loss_std**2 + x.loss_count * (x.loss_mean - mean) ** 2  # type: ignore[operator]
        for x in (a, b)
    )
    return IntervalStats(loss_mean=mean, loss_std=math.sqrt(ss / (n - 1)), loss_count=n)


def _z(a: IntervalStats, b: IntervalStats) -> float:
    """Standard errors by which b's mean exceeds a's (Welch)."""
    se = math.sqrt(a.loss_std**2 / a.loss_count + b.loss_std**2 / b.loss_count)  # type: ignore[operator]
    diff = b.loss_mean - a.loss_mean  # type: ignore[operator]
    return math.inf if se == 0 and diff > 0 else (diff / se if se else 0.0)


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
        Rule(
            "weight_ratio_low",
            "high/low |ΔW| ratio fell below threshold after reaching it",
            {"motion": 1.5},
            _weight_ratio_low,
        ),
        Rule(
            "weight_ratio_unreached",
            "high/low |ΔW| ratio never reached threshold by the latest checkpoint",
            {"motion": 1.5},
            _weight_ratio_unreached,
            final_only=True,
        ),
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
            "an expert's last two interval loss means above its best earlier pair by more than threshold %, "
            "by >= 4 standard errors",
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


def evaluate(series: RunSeries, cfg: HealthConfig, finished: bool = True) -> list[HealthWarning]:
    """Every warning of every active rule at every checkpoint; final-only rules at the latest one, and only
    for a finished run (`finished=False` in live checks: mid-run they would only say "not there yet")."""
    warnings: list[HealthWarning] = []
    last = len(series.points) - 1
    thresholds = active_thresholds(cfg)
    for i in range(len(series.points)):
        for rid, th in thresholds.items():
            rule = RULES[rid]
            if not rule.final_only or (finished and i == last):
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
    """The latest balanced checkpoint before the first firing, or before the rise it saw began (one
    mid-round would hold an expert that had not had its turn)."""
    bad = sorted((w for w in warnings if w.rule in rules), key=lambda w: w.step)
    if not bad:
        return []
    first = bad[0]
    latest = first.from_step if first.from_step is not None else first.step - 1
    candidates = [i for i, p in enumerate(series.points) if p.step <= latest and series.balanced(i)]
    if not candidates:
        return []
    return [
        (
            series.points[candidates[-1]].step,
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
    """The highest ratio among checkpoints where both experts had their share of steps, the high-noise
    expert was still growing and the low-noise one did not outgrow it (a checkpoint right after a
    high-noise turn would win on the schedule alone)."""
    outgrown = {w.step for w in warnings if w.rule == "low_noise_outgrowing"}
    healthy = [
        p
        for i, p in enumerate(series.points)
        if p.weight_ratio is not None
        and p.step not in outgrown
        and series.balanced(i)
        and _high_noise_growing(series, i)
    ]
    if not healthy:
        return []
    best = max(healthy, key=lambda p: p.weight_ratio)  # type: ignore[arg-type,return-value]
    return [
        (
            best.step,
            f"highest high/low |ΔW| ratio ({best.weight_ratio:.2f}x) among checkpoints where both experts "
            "had trained evenly, the high-noise expert was still growing and the low-noise expert did not "
            "outgrow it (motion)",
        )
    ]


def _high_noise_growing(series: RunSeries, i: int) -> bool:
    j = series.previous_balanced(i)
    growth = series.span_growth(j, i, "high_noise") if j is not None else None
    return growth is not None and growth[0] > 0


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
        warnings = evaluate(series, self.cfg, finished=False)
        current = [w for w in warnings if w.step == step]
        last = len(series.points) - 1
        balanced = last if series.balanced(last) else series.previous_balanced(last)
        return HealthResult(
            step,
            current,
            should_stop(current, self.cfg),
            recommend(series, warnings, self.cfg),
            series.points[balanced].step if balanced is not None else None,
        )
