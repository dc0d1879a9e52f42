"""The checkpoint recommender: which checkpoints of a run to keep, each with its reasons in words.

Shared by `cadence analyze` and the live checks (which protect the pick from pruning). It reads the rules'
warnings, never re-judges them: the checkpoint before the first turn for the worse, the lowest eval loss,
and for motion LoRAs the best expert balance.
"""

from __future__ import annotations

from dataclasses import dataclass

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
