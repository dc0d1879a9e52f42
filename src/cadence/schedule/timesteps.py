"""Training noise levels t (= sigma in [0, 1]) drawn per expert without distorting the distribution.

Wan 2.2 splits the noise range between two experts: high_noise owns [boundary, 1], low_noise owns
[0, boundary). An expert must see the *conditional* distribution of the chosen kind on its own range -
what rejection sampling would give - not the full distribution squashed into the range. We get it exactly
and without wasted draws by inverse-CDF sampling: u ~ U(F(t_low), F(t_high)), t = F^-1(u).

Kinds (names follow the seed trainer's `timestep_type`):
- ``uniform`` / ``linear``: t ~ U(0, 1). (ai-toolkit's "linear" picks uniformly from an evenly spaced
  table of 1000 timesteps, i.e. the same distribution up to discretization.)
- ``sigmoid``: t = sigmoid(z), z ~ N(0, 1). This is what ai-toolkit's flow-match scheduler builds for
  "sigmoid" (a table of 1 - sigmoid(randn), the same law because N(0, 1) is symmetric, from which the
  training step picks entries); it concentrates training around t = 0.5.
- ``logit_normal``: t = sigmoid(z), z ~ N(logit_mean, logit_std) (SD3's logit-normal; equals ``sigmoid``
  at the defaults 0 / 1).
- ``shift``: u ~ U(0, 1) mapped through the Wan/SD3 shift t = s*u / (1 + (s - 1)*u) with s = flow_shift;
  s > 1 favours high noise. The map is monotone, so its CDF is u(t) = t / (s - (s - 1)*t).

All CDF maths runs in float64 so that the range edges are exact; results are float32 clamped to
[t_low, t_high) as float32 numbers (so `ExpertSpec.contains(float(t))` holds for every sample).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

TimestepKind = Literal["uniform", "linear", "sigmoid", "shift", "logit_normal"]
KINDS: tuple[str, ...] = ("uniform", "linear", "sigmoid", "shift", "logit_normal")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"train.timestep_type: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def _logit(t: torch.Tensor) -> torch.Tensor:
    """logit with the ends mapped to -inf / +inf (not NaN) so F(0) = 0 and F(1) = 1 exactly."""
    return torch.log(t) - torch.log1p(-t)


class TimestepSampler:
    """Samples t for one expert range; stateless apart from its settings (the RNG is passed in)."""

    def __init__(
        self,
        kind: str,
        flow_shift: float = 3.0,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        _check_kind(kind)
        if flow_shift <= 0:
            raise ValueError(f"train.flow_shift must be > 0, got {flow_shift}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        self.kind = kind
        self.flow_shift = float(flow_shift)
        self.logit_mean = float(logit_mean) if kind == "logit_normal" else 0.0
        self.logit_std = float(logit_std) if kind == "logit_normal" else 1.0

    # ----------------------------------------------------------------------------------- distribution
    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """F(t) of the untruncated distribution, float64."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)
        if self.kind in ("uniform", "linear"):
            return t
        if self.kind == "shift":
            s = self.flow_shift
            return t / (s - (s - 1.0) * t)
        return torch.special.ndtr((_logit(t) - self.logit_mean) / self.logit_std)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """F^-1(u), float64."""
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0.0, 1.0)
        if self.kind in ("uniform", "linear"):
            return u
        if self.kind == "shift":
            s = self.flow_shift
            return s * u / (1.0 + (s - 1.0) * u)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.special.ndtri(u))

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """Probability density of the untruncated distribution at t in (0, 1), float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind in ("uniform", "linear"):
            return torch.ones_like(t)
        if self.kind == "shift":
            s = self.flow_shift
            return s / (s - (s - 1.0) * t) ** 2
        z = (_logit(t) - self.logit_mean) / self.logit_std
        normal_pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return normal_pdf / (self.logit_std * t * (1.0 - t))

    # ----------------------------------------------------------------------------------------- sample
    def sample(self, n: int, t_low: float, t_high: float, generator: torch.Generator) -> torch.Tensor:
        """n float32 noise levels from the distribution conditioned on [t_low, t_high)."""
        if not 0.0 <= t_low < t_high <= 1.0:
            raise ValueError(f"timestep range must satisfy 0 <= t_low < t_high <= 1, got [{t_low}, {t_high})")
        edges = self.cdf(torch.tensor([t_low, t_high], dtype=torch.float64))
        f_low, f_high = float(edges[0]), float(edges[1])
        if not f_high > f_low:
            raise ValueError(
                f"timestep_type {self.kind!r} puts no probability mass on [{t_low}, {t_high}); "
                "widen the range or change the distribution parameters"
            )
        r = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
        t = self.icdf(f_low + (f_high - f_low) * r).to(torch.float32)
        low32, high32 = float32_range(t_low, t_high)
        return t.clamp_(low32, high32)


def float32_range(t_low: float, t_high: float) -> tuple[float, float]:
    """Smallest float32 >= t_low and largest float32 < t_high (the float32 image of [t_low, t_high))."""
    low = torch.tensor(t_low, dtype=torch.float32)
    if float(low) < t_low:
        low = torch.nextafter(low, torch.tensor(math.inf))
    high = torch.tensor(t_high, dtype=torch.float32)
    if float(high) >= t_high:
        high = torch.nextafter(high, torch.tensor(-math.inf))
    return float(low), float(high)


def density(
    kind: str, t: torch.Tensor, flow_shift: float = 3.0, logit_mean: float = 0.0, logit_std: float = 1.0
) -> torch.Tensor:
    """Density of `kind` at t (untruncated), for tests and plots."""
    return TimestepSampler(kind, flow_shift, logit_mean, logit_std).density(t)


def cdf(
    kind: str, t: torch.Tensor, flow_shift: float = 3.0, logit_mean: float = 0.0, logit_std: float = 1.0
) -> torch.Tensor:
    """CDF of `kind` at t (untruncated), for tests and plots."""
    return TimestepSampler(kind, flow_shift, logit_mean, logit_std).cdf(t)
