"""False-alarm and detection rates of the health rules on simulated runs (the numbers in docs/analyze.md).

Not a speed benchmark: it runs the real rules (`cadence.tools.health.evaluate` on `build_series`) on
simulated checkpoint series and counts the runs in which a rule fires.

- low_noise_outgrowing on **healthy** runs: 30 checkpoints 10 steps apart, experts alternating every step.
  Each expert's |ΔW| rises to its own plateau with its own time constant (2-12 checkpoints), plus a slow
  linear drift, times 1% noise per checkpoint; the final high/low ratio is 1.7-3.5x, and runs whose ratio
  ever drops under 1.55x are redrawn (healthy by seed 003: the ratio stays above 1.5x). The smaller expert
  often grows faster in relative terms early on, as in `make demo`. Compared with the rule before issue
  24 (fire whenever low-noise growth per own step exceeds high-noise growth, factor 1).
- low_noise_outgrowing on **degrading** runs: the same, but from a checkpoint between 10 and 20 the
  low-noise expert gains 2-6% more relative growth per interval than it would have (seed 003: +7.1% vs
  +5.4%), so the ratio slides through the floor. Detected = fired at or before the checkpoint after the
  ratio crossed 1.5x.
- motion_tame on **stationary** motion: 30 sampled checkpoints whose coarse motion is a fixed level times
  log-normal noise (sd 0.1, 0.2, 0.3), no data reference. And on **tame** runs: the last n checkpoints
  drop by 40% or 50%.

    .venv/bin/python bench/health_false_alarms.py [--runs 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import sys

from cadence.config.health import HealthConfig
from cadence.metrics.motion import MotionStats
from cadence.networks.magnitude import MagnitudeSummary
from cadence.tools.health import build_series, evaluate
from cadence.tools.sample_motion import StepMotion

CHECKPOINTS = 30
EVERY = 10  # steps between checkpoints (experts alternate every step: 5 own steps each)
PAIR = ("high_noise", "low_noise")


def _rows(checkpoints: int = CHECKPOINTS) -> list[dict]:
    return [{"step": t, "expert": PAIR[(t - 1) % 2]} for t in range(1, checkpoints * EVERY + 1)]


ROWS = _rows()


def _curve(k: int, tau: float, drift: float) -> float:
    return (1 - math.exp(-k / tau)) + drift * k / CHECKPOINTS


def weight_run(
    rng: random.Random, degrade: bool
) -> tuple[dict[int, dict[str, MagnitudeSummary]], int | None]:
    """(step -> expert -> summary, index of the first checkpoint under 1.5x or None)."""
    while True:
        ratio = rng.uniform(1.7, 3.5)
        tau_h, tau_l = rng.uniform(2, 12), rng.uniform(2, 12)
        drift_h, drift_l = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
        start, extra = rng.randint(10, 20), rng.uniform(0.02, 0.06)
        high, low = [], []
        for k in range(1, CHECKPOINTS + 1):
            boost = (1 + extra) ** max(0, k - start) if degrade else 1.0
            high.append(0.01 * _curve(k, tau_h, drift_h) * math.exp(rng.gauss(0, 0.01)))
            low.append(0.01 / ratio * _curve(k, tau_l, drift_l) * boost * math.exp(rng.gauss(0, 0.01)))
        ratios = [h / lo for h, lo in zip(high, low, strict=True)]
        below = next((k for k, r in enumerate(ratios) if r < 1.5), None)
        if not degrade and min(ratios) >= 1.55:
            break
        if degrade and below is not None and below > start:
            break
    mags = {
        (k + 1) * EVERY: {"high_noise": MagnitudeSummary(h), "low_noise": MagnitudeSummary(lo)}
        for k, (h, lo) in enumerate(zip(high, low, strict=True))
    }
    return mags, below


def old_outgrowing_fires(mags: dict[int, dict[str, MagnitudeSummary]]) -> bool:
    """The rule before issue 24: low-noise growth > high-noise growth (factor 1), nothing else."""
    steps = sorted(mags)
    for a, b in zip(steps, steps[1:], strict=False):
        g = {e: mags[b][e].mean / mags[a][e].mean - 1 for e in PAIR}
        if g["low_noise"] > 0 and g["low_noise"] > max(g["high_noise"], 0.0):
            return True
    return False


def outgrowing_steps(mags: dict[int, dict[str, MagnitudeSummary]]) -> list[int]:
    series = build_series(mags, ROWS)
    return [
        w.step for w in evaluate(series, HealthConfig(preset="motion")) if w.rule == "low_noise_outgrowing"
    ]


def _stats(coarse: float) -> MotionStats:
    return MotionStats(mean=coarse, p95=coarse * 4, coarse=coarse, fine=coarse / 4, intervals=32, fps=16.0)


def motion_series(
    values: list[float],
) -> tuple[dict[int, dict[str, MagnitudeSummary]], dict[int, StepMotion]]:
    steps = [(k + 1) * EVERY for k in range(len(values))]
    mags = {s: {"high_noise": MagnitudeSummary(0.004), "low_noise": MagnitudeSummary(0.002)} for s in steps}
    motion = {s: StepMotion(s, _stats(v), {0: _stats(v)}) for s, v in zip(steps, values, strict=True)}
    return mags, motion


def tame_steps(values: list[float], reference: float | None = None) -> list[int]:
    mags, motion = motion_series(values)
    series = build_series(mags, ROWS[: len(values) * EVERY], motion, _stats(reference) if reference else None)
    return [w.step for w in evaluate(series, HealthConfig()) if w.rule == "motion_tame"]


def stationary_motion(rng: random.Random, sd: float) -> list[float]:
    return [0.05 * math.exp(rng.gauss(0, sd)) for _ in range(CHECKPOINTS)]


def tame_motion(rng: random.Random, sd: float, drop: float, last: int) -> list[float]:
    values = stationary_motion(rng, sd)
    return [v * (1 - drop) if k >= CHECKPOINTS - last else v for k, v in enumerate(values)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    out = sys.stdout.write
    old = new = 0
    for _ in range(args.runs):
        mags, _below = weight_run(rng, degrade=False)
        old += old_outgrowing_fires(mags)
        new += bool(outgrowing_steps(mags))
    out(
        f"low_noise_outgrowing, healthy runs: before issue 24 fired in {old}/{args.runs}, now {new}/{args.runs}\n"
    )
    caught = 0
    leads = []
    for _ in range(args.runs):
        mags, below = weight_run(rng, degrade=True)
        assert below is not None
        fired = outgrowing_steps(mags)
        crossing = (below + 1) * EVERY
        if fired and fired[0] <= crossing + EVERY:
            caught += 1
            leads.append((crossing - fired[0]) // EVERY)
    leads.sort()
    lead = leads[len(leads) // 2] if leads else 0
    out(
        f"low_noise_outgrowing, degrading runs: caught {caught}/{args.runs} by the checkpoint after the ratio "
        f"crossed 1.5x (median {lead} checkpoint(s) before the crossing)\n"
    )
    for sd in (0.1, 0.2, 0.3):
        false = sum(bool(tame_steps(stationary_motion(rng, sd))) for _ in range(args.runs))
        line = [f"motion_tame, noise sd {sd}: stationary {false}/{args.runs}"]
        for drop in (0.4, 0.5):
            for last in (2, 5):
                hits = sum(bool(tame_steps(tame_motion(rng, sd, drop, last))) for _ in range(args.runs))
                line.append(f"-{drop:.0%} over last {last}: {hits}/{args.runs}")
        out("; ".join(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
