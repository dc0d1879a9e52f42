"""Training noise levels t (= sigma in [0, 1]) drawn per expert without distorting the distribution.

Wan 2.2 splits the noise range between two experts: high_noise owns [boundary, 1], low_noise owns
[0, boundary). An expert must see the *conditional* distribution of the chosen kind on its own range -
what rejection sampling would give - not the full distribution squashed into the range. We get it exactly
and without wasted draws by inverse-CDF sampling: u ~ U(F(t_low), F(t_high)), t = F^-1(u).

Kinds (names follow the seed trainer's `timestep_type`):
- ``uniform`` / ``linear``: t ~ U(0, 1). (ai-toolkit's "linear" picks uniformly from an evenly spaced
  table of 1000 timesteps, i.e. the same distribution up to discretization.)
- ``weighted``: ai-toolkit's "weighted" (its UI default for Wan 2.1 I2V and TI2V-5B): t drawn as ``linear``,
  and each sample's loss multiplied by ai-toolkit's 1000-entry weight table (`loss_weights`; the table,
  measured by ai-toolkit on Flex.1, lives in aitoolkit_timestep_weights.json). The weights peak near t = 0.88
  (1.52) and fall to 0.45 at low noise; they average 1 over the table. (The relaxis fork's code replaces this
  table with its bell-shaped "linear_timesteps" weights through an `if` that should read `elif`; Cadence
  follows ostris/ai-toolkit.)
- ``sigmoid``: t = sigmoid(z), z ~ N(0, 1). This is what ai-toolkit's flow-match scheduler builds for
  "sigmoid" (a table of 1 - sigmoid(randn), the same law because N(0, 1) is symmetric, from which the
  training step picks entries); it concentrates training around t = 0.5.
- ``logit_normal``: t = sigmoid(z), z ~ N(logit_mean, logit_std) (SD3's logit-normal; equals ``sigmoid``
  at the defaults 0 / 1).
- ``shift``: u ~ U(0, 1) mapped through the Wan/SD3 shift t = s*u / (1 + (s - 1)*u) with s = flow_shift;
  s > 1 favours high noise. The map is monotone, so its CDF is u(t) = t / (s - (s - 1)*t).
- ``flux_shift`` / ``lumina2_shift`` (ai-toolkit's two names for one thing): ``shift`` with s the shift the
  model's own scheduler applies at the batch's latent size, exp(mu) of diffusers' `calculate_shift` where the
  scheduler shifts dynamically (FLUX.1-dev, Qwen-Image), its fixed `shift` otherwise (FLUX.1-schnell, Z-Image);
  ai-toolkit's flow-match sampler builds its training table the same way. The loop asks the model adapter for
  s (`ModelAdapter.timestep_shift`) and draws from `at_shift(s)`; the min/max_denoising_steps quantiles are
  applied to that distribution, as ai-toolkit re-indexes its table for each batch.

All CDF maths runs in float64 so that the range edges are exact; results are float32 clamped to
[t_low, t_high) as float32 numbers (so `ExpertSpec.contains(float(t))` holds for every sample).

`train.min_denoising_steps` / `max_denoising_steps` are ai-toolkit's indices into its table of 1000 training
timesteps, sorted from pure noise (index 0) down; it picks an index uniformly, so a range of indices is a
range of *quantiles* of the distribution: index i covers quantiles (1 - (i+1)/1000, 1 - i/1000]. The sampler
turns the range into a t range once (`denoising_range`) and draws from the distribution truncated to its
intersection with each expert's range, so the shape is kept in both cuts. (ai-toolkit ignores the two keys on
Wan 2.2 A14B, where the expert boundary replaces them; Cadence applies both.)
"""

from __future__ import annotations

import json
import math
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from cadence.config.schema import TrainConfig

TimestepKind = Literal[
    "uniform", "linear", "sigmoid", "shift", "logit_normal", "weighted", "flux_shift", "lumina2_shift"
]
KINDS: tuple[str, ...] = (
    "uniform", "linear", "sigmoid", "shift", "logit_normal", "weighted", "flux_shift", "lumina2_shift"
)  # fmt: skip
UNIFORM_KINDS = ("uniform", "linear", "weighted")
RESOLUTION_KINDS = ("flux_shift", "lumina2_shift")  # the shift comes from the model at each batch's size
SHIFT_KINDS = ("shift", *RESOLUTION_KINDS)
TABLE_SIZE = 1000  # ai-toolkit's training timestep table: index 0 = t 1.0 (pure noise), index 999 = t 0.001
WEIGHTS_FILE = Path(__file__).with_name("aitoolkit_timestep_weights.json")


@cache
def aitoolkit_weights() -> torch.Tensor:
    """ai-toolkit's loss weight per entry of its 1000-step timestep table (float64)."""
    weights = json.loads(WEIGHTS_FILE.read_text(encoding="utf-8"))["weights"]
    if len(weights) != TABLE_SIZE:
        raise ValueError(f"{WEIGHTS_FILE} holds {len(weights)} weights, expected {TABLE_SIZE}")
    return torch.tensor(weights, dtype=torch.float64)


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
        t_range: tuple[float, float] = (0.0, 1.0),
        denoising_steps: tuple[int, int] = (0, TABLE_SIZE - 1),
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
        if not 0.0 <= t_range[0] < t_range[1] <= 1.0:
            raise ValueError(f"timestep range must satisfy 0 <= low < high <= 1, got {t_range}")
        self.t_range = (float(t_range[0]), float(t_range[1]))
        self.denoising_steps = denoising_steps  # what t_range was made from: at_shift re-derives it

    @property
    def by_resolution(self) -> bool:
        """The shift is the model's at each batch's latent size (see `at_shift`)."""
        return self.kind in RESOLUTION_KINDS

    def at_shift(self, shift: float | None) -> TimestepSampler:
        """The sampler for a batch whose model shifts by `shift` (flux_shift / lumina2_shift; None: a model
        without a shift of its own keeps flow_shift); every other kind is itself."""
        if not self.by_resolution or shift is None or shift == self.flow_shift:
            return self
        return _shifted(self.kind, float(shift), self.denoising_steps)

    # ----------------------------------------------------------------------------------- distribution
    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """F(t) of the untruncated distribution, float64."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)
        if self.kind in UNIFORM_KINDS:
            return t
        if self.kind in SHIFT_KINDS:
            s = self.flow_shift
            return t / (s - (s - 1.0) * t)
        return torch.special.ndtr((_logit(t) - self.logit_mean) / self.logit_std)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """F^-1(u), float64."""
        u = torch.as_tensor(u, dtype=torch.float64).clamp(0.0, 1.0)
        if self.kind in UNIFORM_KINDS:
            return u
        if self.kind in SHIFT_KINDS:
            s = self.flow_shift
            return s * u / (1.0 + (s - 1.0) * u)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.special.ndtri(u))

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """Probability density of the untruncated distribution at t in (0, 1), float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind in UNIFORM_KINDS:
            return torch.ones_like(t)
        if self.kind in SHIFT_KINDS:
            s = self.flow_shift
            return s / (s - (s - 1.0) * t) ** 2
        z = (_logit(t) - self.logit_mean) / self.logit_std
        normal_pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return normal_pdf / (self.logit_std * t * (1.0 - t))

    # ----------------------------------------------------------------------------------------- ranges
    def expert_range(self, t_low: float, t_high: float) -> tuple[float, float]:
        """An expert's range [t_low, t_high) cut to the configured `t_range` (min/max_denoising_steps)."""
        low, high = max(t_low, self.t_range[0]), min(t_high, self.t_range[1])
        if not low < high:
            raise ValueError(
                f"train.min_denoising_steps / max_denoising_steps keep noise levels t in "
                f"[{self.t_range[0]:.4g}, {self.t_range[1]:.4g}], which leaves nothing of the expert range "
                f"[{t_low:.4g}, {t_high:.4g}); widen them or stop training that expert"
            )
        return low, high

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights of the kind (`weighted`: ai-toolkit's table at the nearest table entry,
        index round(1000 * (1 - t))), or None for the kinds that weight every sample alike."""
        if self.kind != "weighted":
            return None
        index = torch.round(TABLE_SIZE * (1.0 - t.double().cpu())).clamp(0, TABLE_SIZE - 1).long()
        return aitoolkit_weights()[index].to(torch.float32)

    # ----------------------------------------------------------------------------------------- sample
    def sample(self, n: int, t_low: float, t_high: float, generator: torch.Generator) -> torch.Tensor:
        """n float32 noise levels from the distribution conditioned on [t_low, t_high) (cut to `t_range`)."""
        if not 0.0 <= t_low < t_high <= 1.0:
            raise ValueError(f"timestep range must satisfy 0 <= t_low < t_high <= 1, got [{t_low}, {t_high})")
        t_low, t_high = self.expert_range(t_low, t_high)
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


def denoising_range(sampler: TimestepSampler, min_steps: int, max_steps: int) -> tuple[float, float]:
    """The t range that ai-toolkit's min/max_denoising_steps (indices into its 1000-entry table, 0 = pure
    noise, both kept; `max_steps` above 999 counts as 999 as ai-toolkit clamps it) keep for `sampler`'s
    distribution: the quantiles [1 - (max_steps + 1)/1000, 1 - min_steps/1000] mapped through its F^-1."""
    max_steps = min(max_steps, TABLE_SIZE - 1)
    if not 0 <= min_steps <= max_steps:
        raise ValueError(
            f"train.min_denoising_steps {min_steps} is above max_denoising_steps {max_steps}; "
            "min_denoising_steps <= max_denoising_steps <= 999"
        )
    if min_steps == 0 and max_steps == TABLE_SIZE - 1:
        return 0.0, 1.0
    q = torch.tensor([1.0 - (max_steps + 1) / TABLE_SIZE, 1.0 - min_steps / TABLE_SIZE], dtype=torch.float64)
    low, high = (float(v) for v in sampler.icdf(q))
    return (0.0 if max_steps == TABLE_SIZE - 1 else low), (1.0 if min_steps == 0 else high)


def sampler_for(train: TrainConfig) -> TimestepSampler:
    """The training timestep sampler a config describes (distribution + min/max_denoising_steps range);
    flux_shift / lumina2_shift start at flow_shift, replaced per batch by the model's shift (`at_shift`)."""
    return _ranged(
        train.timestep_type,
        train.flow_shift,
        train.logit_mean,
        train.logit_std,
        (train.min_denoising_steps, train.max_denoising_steps),
    )


def _ranged(
    kind: str, flow_shift: float, logit_mean: float, logit_std: float, steps: tuple[int, int]
) -> TimestepSampler:
    base = TimestepSampler(kind, flow_shift, logit_mean, logit_std)
    t_range = denoising_range(base, *steps)
    return TimestepSampler(kind, flow_shift, logit_mean, logit_std, t_range=t_range, denoising_steps=steps)


@lru_cache(maxsize=64)  # a run has one latent size per bucket: a handful of shifts
def _shifted(kind: str, shift: float, steps: tuple[int, int]) -> TimestepSampler:
    return _ranged(kind, shift, 0.0, 1.0, steps)


def range_problems(sampler: TimestepSampler, ranges: dict[str, tuple[float, float]]) -> list[tuple[str, str]]:
    """(key, message) for each trained expert {name: (t_low, t_high)} that min/max_denoising_steps leave
    without any noise level, found before caching instead of at the expert's first step."""
    problems = []
    for name, (t_low, t_high) in ranges.items():
        try:
            sampler.expert_range(t_low, t_high)
        except ValueError as exc:
            problems.append(("train.min_denoising_steps", f"{name}: {exc}"))
    return problems


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
