"""Per-expert timestep sampling keeps the shape of the chosen distribution (checked against rejection)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit, logit

from cadence.config.schema import TrainConfig
from cadence.models.base import experts_for
from cadence.schedule.timesteps import (
    KINDS,
    TimestepSampler,
    aitoolkit_weights,
    cdf,
    denoising_range,
    density,
    float32_range,
    range_problems,
    sampler_for,
)
from cadence.train.objective import flow_matching_loss

BOUNDARY = 0.9  # Wan 2.2 I2V A14B
RANGES = [(e.name, e.t_low, e.t_high) for e in experts_for(True, BOUNDARY)] + [("main", 0.0, 1.0)]
N = 20_000


def _naive_draws(kind: str, n: int, rng: np.random.Generator, shift: float = 3.0) -> np.ndarray:
    """The untruncated distribution written the straightforward way (as the seed trainer draws it)."""
    if kind in ("uniform", "linear", "weighted"):
        return rng.random(n)
    if kind in ("shift", "flux_shift", "lumina2_shift"):  # flux_shift: shift at a given value
        u = rng.random(n)
        return shift * u / (1 + (shift - 1) * u)
    return expit(rng.standard_normal(n))  # sigmoid / logit_normal at mean 0, std 1


def _reference_cdf(kind: str, t: np.ndarray, shift: float = 3.0) -> np.ndarray:
    """Untruncated CDF written independently of the module (scipy)."""
    if kind in ("uniform", "linear", "weighted"):
        return np.clip(t, 0, 1)
    if kind in ("shift", "flux_shift", "lumina2_shift"):  # flux_shift: shift at a given value
        return t / (shift - (shift - 1) * t)
    with np.errstate(divide="ignore"):
        return stats.norm.cdf(logit(np.clip(t, 0, 1)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,lo,hi", RANGES)
def test_samples_follow_truncated_distribution(kind: str, name: str, lo: float, hi: float) -> None:
    gen = torch.Generator().manual_seed(1234)
    t = TimestepSampler(kind, flow_shift=3.0).sample(N, lo, hi, gen)
    assert t.dtype == torch.float32 and t.shape == (N,)
    assert float(t.min()) >= lo and float(t.max()) < hi, (name, float(t.min()), float(t.max()))

    f_lo, f_hi = _reference_cdf(kind, np.array([lo, hi]))
    truncated = lambda x: (_reference_cdf(kind, np.asarray(x, dtype=np.float64)) - f_lo) / (f_hi - f_lo)  # noqa: E731
    assert stats.kstest(t.double().numpy(), truncated).pvalue > 0.01

    # Independent check: rejection sampling from the untruncated draws has the same law.
    draws = _naive_draws(kind, 400_000, np.random.default_rng(7))
    kept = draws[(draws >= lo) & (draws < hi)][:N]
    assert len(kept) > 2_000
    assert stats.ks_2samp(t.double().numpy(), kept).pvalue > 0.01


def test_squashing_would_be_detected() -> None:
    """The KS check is sharp enough to reject the 'squash the full distribution into the range' shortcut."""
    gen = torch.Generator().manual_seed(0)
    full = TimestepSampler("sigmoid").sample(N, 0.0, 1.0, gen)
    squashed = BOUNDARY + full.double().numpy() * (1 - BOUNDARY)
    f_lo, f_hi = _reference_cdf("sigmoid", np.array([BOUNDARY, 1.0]))
    truncated = lambda x: (_reference_cdf("sigmoid", np.asarray(x)) - f_lo) / (f_hi - f_lo)  # noqa: E731
    assert stats.kstest(squashed, truncated).pvalue < 1e-6


def test_same_seed_same_samples_and_different_seed_differs() -> None:
    sampler = TimestepSampler("logit_normal", logit_mean=0.3, logit_std=0.8)
    a = sampler.sample(64, 0.0, BOUNDARY, torch.Generator().manual_seed(5))
    b = sampler.sample(64, 0.0, BOUNDARY, torch.Generator().manual_seed(5))
    c = sampler.sample(64, 0.0, BOUNDARY, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_logit_normal_parameters_move_the_distribution() -> None:
    gen = torch.Generator().manual_seed(3)
    t = TimestepSampler("logit_normal", logit_mean=1.0, logit_std=0.5).sample(N, 0.0, 1.0, gen)
    z = logit(t.double().numpy())
    assert stats.kstest(z, stats.norm(loc=1.0, scale=0.5).cdf).pvalue > 0.01


def test_edges_are_exact_in_float32() -> None:
    low, high = float32_range(BOUNDARY, 1.0)
    assert (
        low >= BOUNDARY
        and np.float32(low) == low
        and float(np.nextafter(np.float32(low), np.float32(0))) < BOUNDARY
    )
    low2, high2 = float32_range(0.0, BOUNDARY)
    assert (
        low2 == 0.0 and high2 < BOUNDARY and float(np.nextafter(np.float32(high2), np.float32(1))) >= BOUNDARY
    )
    # A range so narrow that every draw lands on an edge still stays inside it.
    t = TimestepSampler("shift").sample(
        1000, BOUNDARY, math.nextafter(BOUNDARY, 1.0) + 1e-7, torch.Generator().manual_seed(0)
    )
    assert float(t.min()) >= BOUNDARY and float(t.max()) < BOUNDARY + 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_density_is_derivative_of_cdf_and_integrates_to_one(kind: str) -> None:
    t = torch.linspace(0.001, 0.999, 20_001, dtype=torch.float64)
    d = density(kind, t, flow_shift=5.0)
    assert abs(float(torch.trapezoid(d, t)) - float(cdf(kind, t[-1:], 5.0) - cdf(kind, t[:1], 5.0))) < 1e-6
    mid = t[1:-1:1000]
    h = 1e-6
    numeric = (cdf(kind, mid + h, 5.0) - cdf(kind, mid - h, 5.0)) / (2 * h)
    assert torch.allclose(numeric, density(kind, mid, flow_shift=5.0), rtol=1e-5)


def test_shift_favours_high_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    assert float(TimestepSampler("shift", flow_shift=5.0).sample(N, 0, 1, gen).mean()) > 0.7
    assert float(TimestepSampler("shift", flow_shift=1.0).sample(N, 0, 1, gen).mean()) == pytest.approx(
        0.5, abs=0.01
    )


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="timestep_type"):
        TimestepSampler("cosmic")
    with pytest.raises(ValueError, match="t_low"):
        TimestepSampler("uniform").sample(4, 0.5, 0.5, torch.Generator())


# --------------------------------------------------------------------------- ai-toolkit's "weighted"
def test_weighted_draws_like_linear_and_weights_with_ai_toolkits_table() -> None:
    """weighted = linear timesteps + ai-toolkit's per-timestep loss weight (its default_weighing_scheme:
    entry 0 belongs to t = 1.0, entry i to t = (1000 - i) / 1000)."""
    table = aitoolkit_weights()
    assert table.shape == (1000,)
    # three entries read from ostris/ai-toolkit toolkit/timestep_weighing/default_weighing_scheme.py (27a03a91)
    assert float(table[0]) == 0.905706524848938 and float(table[999]) == 0.4472601115703583
    assert float(table.max()) == 1.5226575136184692 and int(table.argmax()) == 124
    assert float(table.mean()) == pytest.approx(1.0, abs=1e-6)
    sampler = TimestepSampler("weighted")
    t = torch.tensor([1.0, 0.876, 0.5, 0.0004, 0.0])
    weights = sampler.loss_weights(t)
    assert weights.tolist() == pytest.approx([float(table[i]) for i in (0, 124, 500, 999, 999)])
    assert (
        TimestepSampler("linear").loss_weights(t) is None
        and TimestepSampler("sigmoid").loss_weights(t) is None
    )
    # each expert keeps the uniform shape inside its own range; the weights follow t, not the range
    gen = torch.Generator().manual_seed(2)
    high = sampler.sample(N, BOUNDARY, 1.0, gen)
    assert stats.kstest(high.double().numpy(), stats.uniform(BOUNDARY, 1 - BOUNDARY).cdf).pvalue > 0.01
    index = torch.round(1000 * (1 - high.double())).long().clamp(0, 999)
    assert torch.equal(sampler.loss_weights(high), table[index].float())


def test_weighted_loss_is_the_weighted_mean_like_ai_toolkit() -> None:
    """ai-toolkit multiplies each sample's loss by its weight and takes the mean (no renormalising)."""
    gen = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(3, 4, 2, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, 2, generator=gen)
    weights = torch.tensor([1.5, 0.5, 0.9])
    per_sample = ((prediction - target) ** 2).flatten(1).mean(1)
    assert float(flow_matching_loss(prediction, target, None, weights)) == pytest.approx(
        float((per_sample * weights).mean()), rel=1e-6
    )
    assert float(flow_matching_loss(prediction, target)) == pytest.approx(float(per_sample.mean()), rel=1e-6)


# --------------------------------------------------------------------------- min/max_denoising_steps
def _aitoolkit_draws(kind: str, low: int, high: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """ai-toolkit's procedure written out: a table of 1000 timesteps sorted from pure noise down (linear: the
    fixed linspace(1000, 1); sigmoid: a fresh sorted sigmoid(randn) table per draw), an index drawn uniformly
    from [low, high] (BaseSDTrainProcess, flowmatch branch), t = table[index] / 1000."""
    out = np.empty(n)
    for k in range(n):
        if kind == "linear":
            table = np.linspace(1000, 1, 1000) / 1000
        else:
            table = np.sort(1 - expit(rng.standard_normal(1000)))[::-1] * 1000 / 1000
        out[k] = table[rng.integers(low, high + 1)]
    return out


@pytest.mark.parametrize("kind", ["linear", "sigmoid"])
def test_denoising_steps_keep_the_quantiles_ai_toolkit_keeps(kind: str) -> None:
    low, high = 150, 699  # indices: 0 = pure noise
    sampler = sampler_for(TrainConfig(timestep_type=kind, min_denoising_steps=low, max_denoising_steps=high))
    t_low, t_high = sampler.t_range
    base = TimestepSampler(kind)
    assert float(base.cdf(torch.tensor(t_low, dtype=torch.float64))) == pytest.approx(1 - (high + 1) / 1000)
    assert float(base.cdf(torch.tensor(t_high, dtype=torch.float64))) == pytest.approx(1 - low / 1000)
    ours = sampler.sample(4000, 0.0, 1.0, torch.Generator().manual_seed(4)).double().numpy()
    assert ours.min() >= t_low and ours.max() < t_high
    theirs = _aitoolkit_draws(kind, low, high, 4000, np.random.default_rng(9))
    assert stats.ks_2samp(ours, theirs).pvalue > 0.01


def test_denoising_steps_defaults_keep_everything_and_cut_inside_an_expert() -> None:
    assert denoising_range(TimestepSampler("sigmoid"), 0, 999) == (0.0, 1.0)
    assert denoising_range(TimestepSampler("sigmoid"), 0, 1000) == (0.0, 1.0)  # ai-toolkit clamps to 999
    sampler = sampler_for(
        TrainConfig(timestep_type="linear", min_denoising_steps=50, max_denoising_steps=999)
    )
    assert sampler.t_range == (0.0, pytest.approx(0.95))
    t = sampler.sample(N, BOUNDARY, 1.0, torch.Generator().manual_seed(1)).double().numpy()
    assert (
        t.min() >= BOUNDARY and t.max() < 0.95
    )  # the expert's range cut to the configured one, still uniform
    assert stats.kstest(t, stats.uniform(BOUNDARY, 0.95 - BOUNDARY).cdf).pvalue > 0.01


def test_denoising_steps_that_leave_an_expert_nothing_are_named_before_training() -> None:
    sampler = sampler_for(TrainConfig(timestep_type="linear", min_denoising_steps=200))  # t <= 0.8
    ranges = {e.name: (e.t_low, e.t_high) for e in experts_for(True, BOUNDARY)}
    problems = range_problems(sampler, ranges)
    assert [key for key, _ in problems] == ["train.min_denoising_steps"]
    assert "high_noise" in problems[0][1] and "[0.9, 1)" in problems[0][1]
    with pytest.raises(ValueError, match="max_denoising_steps"):
        denoising_range(TimestepSampler("linear"), 600, 500)


def test_flux_shift_is_shift_at_the_models_value_with_the_denoising_quantiles_per_shift():
    from types import SimpleNamespace

    from cadence.schedule.timesteps import TimestepSampler, denoising_range, sampler_for

    train = SimpleNamespace(
        timestep_type="flux_shift", flow_shift=3.0, logit_mean=0.0, logit_std=1.0,
        min_denoising_steps=50, max_denoising_steps=900,
    )  # fmt: skip
    sampler = sampler_for(train)
    assert sampler.by_resolution and sampler.at_shift(None) is sampler and sampler.at_shift(3.0) is sampler
    for shift in (1.0, 1.9, 3.2):
        at = sampler.at_shift(shift)
        plain = TimestepSampler("shift", shift)
        assert at.t_range == denoising_range(plain, 50, 900)  # ai-toolkit re-indexes its table per batch
        u = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
        assert torch.equal(at.icdf(u), plain.icdf(u)) and torch.equal(at.cdf(u), plain.cdf(u))
        assert sampler.at_shift(shift) is at  # one sampler per shift, kept
    assert sampler.at_shift(1.9).t_range != sampler.at_shift(3.2).t_range
    other = sampler_for(SimpleNamespace(**{**vars(train), "timestep_type": "sigmoid"}))
    assert not other.by_resolution and other.at_shift(1.9) is other
