"""The health rules: each judges one checkpoint of a series, reading earlier checkpoints only through the
series' prefix tables (`series_index`), so judging a checkpoint costs the same early or late in a run.

No library does this; it re-implements by rule what the seed-003 practitioner did by hand on a Wan 2.2 I2V
motion run: compare the high- and low-noise experts' weight magnitudes, their growth between checkpoints
and their LR ratio, and pick the checkpoint before things went wrong. Motion and character LoRAs want
*opposite* balances (motion: high-noise must dominate; character: it must not), hence two presets. The
rules on sample motion live in `health_motion`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cadence.config.health import HealthConfig
from cadence.tools.health_motion import motion_excess, motion_tame
from cadence.tools.health_series import HealthWarning, RunSeries
from cadence.tools.run_folder import IntervalStats
from cadence.tools.series_index import has_losses, pool

# A loss rise must hold over two intervals and clear this many standard errors: with tens of checkpoint
# comparisons per run, a two-SE test on one interval flagged noise in most runs (152 of 200 simulated
# stationary runs of 30 checkpoints); at 4 SE on pairs, 1-2 of 200, while a sustained +30% is still caught.
LOSS_RISE_Z = 4.0
# low_noise_outgrowing also needs the high/low ratio heading for its floor (weight_ratio_low's threshold,
# else seed 003's 1.5x): within this factor of it, and reaching it within this many intervals at the pace
# of the last one. See docs/analyze.md for the false-alarm rates these give on simulated healthy runs.
RATIO_FLOOR = 1.5
OUTGROW_NEAR_FLOOR = 1.5
OUTGROW_HORIZON = 2.0


# ----------------------------------------------------------------------------------------------- rules
Active = Mapping[
    str, float
]  # every active rule's threshold (a rule may read another's, e.g. the ratio floor)
Check = Callable[[RunSeries, int, float, Active], list[HealthWarning]]


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    defaults: dict[str | None, float]  # preset (None = no preset) -> threshold; absent = rule off
    check: Check
    final_only: bool = False  # judged on the latest checkpoint only (a level reached by the end)


def _weight_ratio_low(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
    """The ratio fell below the threshold after having reached it (seed 003: "stop if it drops below").
    Only checkpoints where both experts had their share count; a run still climbing towards the threshold
    has not degraded."""
    p = s.points[i]
    if p.weight_ratio is None or p.weight_ratio >= th or not s.balanced(i):
        return []
    k = s.tables(i).ratio_peak_before(i)  # the first highest balanced ratio before i
    if k is None or (s.points[k].weight_ratio or 0.0) < th:
        return []
    peak = s.points[k]
    msg = (
        f"high/low |ΔW| ratio fell to {p.weight_ratio:.2f}x, below {th:.2f}x (it was {peak.weight_ratio:.2f}x "
        f"at step {peak.step}): the low-noise expert is catching up and tends to tame motion; keep an "
        "earlier checkpoint or lower the low-noise LR"
    )
    return [HealthWarning("weight_ratio_low", p.step, None, msg, p.weight_ratio, th)]


def _weight_ratio_unreached(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
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


def _weight_ratio_high(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
    p = s.points[i]
    if p.weight_ratio is None or p.weight_ratio <= th * (1 + 1e-9) or not s.balanced(i):
        return []
    msg = (
        f"high/low |ΔW| ratio {p.weight_ratio:.2f}x is above {th:.2f}x: for character/style LoRAs a dominant "
        "high-noise expert memorises poses and backgrounds; lower its LR or keep an earlier checkpoint"
    )
    return [HealthWarning("weight_ratio_high", p.step, None, msg, p.weight_ratio, th)]


def _low_noise_outgrowing(s: RunSeries, i: int, th: float, active: Active) -> list[HealthWarning]:
    """Seed 003's evidence, all of it: between two balanced checkpoints the low-noise expert grew clearly
    faster per own step (factor th), the high/low |ΔW| ratio fell and is heading for its floor (near it,
    and at this pace reaching it within OUTGROW_HORIZON more such intervals), and, where both checkpoints
    have samples, their coarse motion got tamer. Early in any run the smaller expert grows faster in
    relative terms while the ratio is far above the floor: that alone is not a warning.

    Growth is per own training step, so a checkpoint interval that held only one expert's turn is not read
    as the other one standing still, nor one turn compared with an earlier (faster) turn of the other."""
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
    floor = active.get("weight_ratio_low", RATIO_FLOOR)
    before, now = s.points[j].weight_ratio, s.points[i].weight_ratio
    if before is None or now is None or not heading_to_floor(before, now, floor):
        return []
    motion_before, motion_now = s.points[j].motion, s.points[i].motion
    tamer = ""
    if motion_before is not None and motion_now is not None:
        if motion_now.stats.coarse >= motion_before.stats.coarse:
            return []  # the samples kept their motion: the low-noise expert is not suppressing it
        tamer = f"; sample coarse motion fell {motion_now.stats.coarse / motion_before.stats.coarse - 1:+.0%}"
    steps = "" if n_high == n_low else f" per own step ({n_high} high-noise vs {n_low} low-noise steps)"
    msg = (
        f"since step {s.points[j].step} low-noise |ΔW| grew {g_low:+.1%}, more than {th:g}x as fast as "
        f"high-noise ({g_high:+.1%}){steps}, and the high/low ratio fell {before:.2f}x -> {now:.2f}x towards "
        f"its {floor:g}x floor{tamer}: the low-noise expert is overpowering motion; keep the previous "
        "checkpoint or lower the low-noise max LR"
    )
    return [HealthWarning("low_noise_outgrowing", s.points[i].step, "low_noise", msg, rate_low, limit)]


def heading_to_floor(before: float, now: float, floor: float) -> bool:
    """The ratio fell, is within OUTGROW_NEAR_FLOOR x its floor, and at this interval's pace reaches the
    floor within OUTGROW_HORIZON more intervals (or is below it already)."""
    drop = before - now
    return drop > 0 and now <= floor * OUTGROW_NEAR_FLOOR and now - floor <= OUTGROW_HORIZON * drop


def _high_noise_magnitude_low(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
    p = s.points[i]
    high = p.experts.get("high_noise")
    if not high or high.magnitude >= th:
        return []
    msg = (
        f"high-noise mean |ΔW| {high.magnitude:.6f} is below the target {th:g} for strong motion; "
        "if it stays there, raise the high-noise LR for the next run (the target depends on rank/alpha/LR)"
    )
    return [HealthWarning("high_noise_magnitude_low", p.step, "high_noise", msg, high.magnitude, th)]


def _lr_ratio_low(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
    p = s.points[i]
    if p.lr_ratio is None or p.lr_ratio >= th * (1 - 1e-9):
        return []
    msg = (
        f"high/low LR ratio {p.lr_ratio:.2f}x is under {th:.2f}x: motion LoRAs need the high-noise expert "
        "to learn faster (3-4x); raise the high-noise LR"
    )
    return [HealthWarning("lr_ratio_low", p.step, None, msg, p.lr_ratio, th)]


def _lr_ratio_high(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
    p = s.points[i]
    if p.lr_ratio is None or p.lr_ratio <= th * (1 + 1e-9):
        return []
    msg = (
        f"high/low LR ratio {p.lr_ratio:.2f}x is above {th:.2f}x: character/style LoRAs overfit at high "
        "noise; give the high-noise expert the lower LR"
    )
    return [HealthWarning("lr_ratio_high", p.step, None, msg, p.lr_ratio, th)]


def _loss_rising(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
    """An expert's last two intervals (among those it trained in) each sit more than th% above the best
    level it reached before them (the lowest mean of two consecutive earlier intervals), and the pooled
    last two exceed it by ≥ LOSS_RISE_Z standard errors. Pairs, not single intervals, on both sides: one
    unlucky interval is not a trend."""
    out = []
    p = s.points[i]
    tables = s.tables(i)
    for expert in p.experts:
        pairs = tables.losses.get(expert)
        n = bisect.bisect_right(pairs.trained, i) if pairs else 0  # checkpoints with losses up to i
        if not has_losses(p, expert) or n < 4:
            continue
        assert pairs is not None
        prev, cur = (s.points[k].experts[expert].stats for k in pairs.trained[n - 2 : n])
        last_two = pairs.trained[n - 2]
        rise_start = s.points[last_two - 1].step if last_two > 0 else 0  # the checkpoint before it rose
        ref = pairs.pools[pairs.best[n - 4]]  # the lowest pool of two consecutive earlier intervals
        limit = ref.loss_mean * (1 + th / 100)  # type: ignore[operator]
        if ref.loss_mean <= 0 or prev.loss_mean <= limit or cur.loss_mean <= limit:  # type: ignore[operator]
            continue
        pooled = pool(prev, cur)
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


def _z(a: IntervalStats, b: IntervalStats) -> float:
    """Standard errors by which b's mean exceeds a's (Welch)."""
    se = math.sqrt(a.loss_std**2 / a.loss_count + b.loss_std**2 / b.loss_count)  # type: ignore[operator]
    diff = b.loss_mean - a.loss_mean  # type: ignore[operator]
    return math.inf if se == 0 and diff > 0 else (diff / se if se else 0.0)


def _gradient_unstable(s: RunSeries, i: int, th: float, _active: Active) -> list[HealthWarning]:
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
            "low-noise growth per own step > high-noise growth x factor, the ratio heading for its floor "
            "and, with samples, tamer motion",
            {"motion": 1.25},
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
            "motion_tame",
            "the last two sampled checkpoints' coarse motion more than threshold (fraction) below the "
            "earlier peak pair, by >= 4 noise units (and below the training clips')",
            {None: 0.3, "motion": 0.3, "character": 0.5},
            motion_tame,
        ),
        Rule(
            "motion_excess",
            "the last two sampled checkpoints' coarse motion above threshold x the training clips'",
            {None: 2.0, "motion": 2.0, "character": 3.0},
            motion_excess,
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
