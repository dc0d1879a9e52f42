"""Growth of each expert's |ΔW| between two chosen checkpoints (`cadence analyze --since A [--until B]`).

Seed 003's practitioner compared the experts over a span they picked ("2400 → 3000: high +5.4%, low +7.1%,
low grows 1.3× faster"), not only between neighbouring checkpoints. Growth is also given per 1000 of the
expert's own steps, since experts taking turns may have trained unequally inside the span.
"""

from __future__ import annotations

from dataclasses import dataclass

from cadence.tools.health_series import RunSeries


@dataclass(frozen=True)
class ExpertSpan:
    expert: str
    start: float  # mean |ΔW| at the first checkpoint
    end: float
    growth: float  # relative (0.054 = +5.4%)
    own_steps: int  # the expert's training steps inside the span (0 when the metrics do not say)

    @property
    def per_1000_steps(self) -> float | None:
        return self.growth / self.own_steps * 1000 if self.own_steps else None


@dataclass(frozen=True)
class GrowthSpan:
    since: int
    until: int
    experts: list[ExpertSpan]

    @property
    def low_over_high(self) -> float | None:
        """How many times faster (per own step) the low-noise expert grew than the high-noise one."""
        rates = {e.expert: e.per_1000_steps for e in self.experts}
        high, low = rates.get("high_noise"), rates.get("low_noise")
        return low / high if high and low is not None and high > 0 else None

    def to_dict(self) -> dict:
        return {
            "since": self.since,
            "until": self.until,
            "low_over_high": self.low_over_high,
            "experts": {
                e.expert: {
                    "start": e.start,
                    "end": e.end,
                    "growth": e.growth,
                    "own_steps": e.own_steps,
                    "growth_per_1000_steps": e.per_1000_steps,
                }
                for e in self.experts
            },
        }

    def lines(self) -> list[str]:
        out = [f"Growth from step {self.since} to step {self.until}:"]
        for e in self.experts:
            rate = f", {e.per_1000_steps:+.1%} per 1000 own steps" if e.per_1000_steps is not None else ""
            out.append(
                f"  {e.expert:<10} |dW| {e.start:.6f} -> {e.end:.6f}: {e.growth:+.1%} in {e.own_steps} own steps{rate}"
            )
        if self.low_over_high is not None:
            out.append(f"  low-noise grew {self.low_over_high:.2f}x as fast as high-noise per own step")
        return out


def growth_span(series: RunSeries, since: int, until: int | None = None) -> GrowthSpan:
    """The span between two saved checkpoints (until: the latest); ValueError naming the steps on offer."""
    steps = [p.step for p in series.points]
    until = steps[-1] if until is None and steps else until
    for flag, step in (("--since", since), ("--until", until)):
        if step not in steps:
            raise ValueError(
                f"{flag} {step}: no checkpoint at that step; checkpoints: {', '.join(map(str, steps))}"
            )
    assert until is not None
    if until <= since:
        raise ValueError(f"--until {until} must be after --since {since}")
    a, b = series.points[series.index_of(since)], series.points[series.index_of(until)]
    experts = []
    for name, end in b.experts.items():
        start = a.experts.get(name)
        if start is None or start.magnitude <= 0:
            continue
        growth = (end.magnitude - start.magnitude) / start.magnitude
        experts.append(
            ExpertSpan(name, start.magnitude, end.magnitude, growth, end.total_steps - start.total_steps)
        )
    return GrowthSpan(since, until, experts)
