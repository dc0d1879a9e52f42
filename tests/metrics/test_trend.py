"""Trend statistics against numpy/scipy on known series, incl. the per-expert split and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import linregress

from cadence.metrics.trend import TrendTracker, TrendWindow, fit_trend


def _ema(values: list[float], span: int) -> float:
    a = 2.0 / (span + 1.0)
    out = values[0]
    for v in values[1:]:
        out = a * v + (1 - a) * out
    return out


def test_fit_matches_scipy_and_numpy() -> None:
    rng = np.random.default_rng(0)
    y = 0.1 - 1e-4 * np.arange(150) + rng.normal(0, 0.01, 150)
    stats = fit_trend(y)
    ref = linregress(np.arange(150), y)
    assert stats.slope == pytest.approx(ref.slope, rel=1e-10)
    assert stats.intercept == pytest.approx(ref.intercept, rel=1e-10)
    assert stats.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)
    assert stats.cv == pytest.approx(np.std(y) / np.mean(y), rel=1e-10)  # population std (ddof=0)
    assert stats.improvement_rate == pytest.approx(-ref.slope * 150 / np.mean(y), rel=1e-10)
    assert stats.improvement_rate > 0  # falling loss = positive improvement


def test_improvement_rate_is_scale_free() -> None:
    y = 0.1 - 2e-5 * np.arange(200)
    assert fit_trend(y).improvement_rate == pytest.approx(fit_trend(1000 * y).improvement_rate)
    assert fit_trend(y).improvement_rate == pytest.approx(2e-5 * 200 / np.mean(y))


def test_constant_series_has_zero_r2_and_cv() -> None:
    stats = fit_trend([0.2] * 30)
    assert stats.r2 == 0
    assert stats.slope == pytest.approx(0, abs=1e-15) and stats.cv == pytest.approx(0, abs=1e-12)
    assert stats.improvement_rate == pytest.approx(0, abs=1e-12)


def test_window_needs_min_samples_and_slides() -> None:
    w = TrendWindow(window=50, min_samples=20)
    values = list(np.linspace(1.0, 0.5, 80))
    for i, v in enumerate(values):
        w.add(v)
        if i < 19:
            assert w.stats() is None
    stats = w.stats()
    assert stats is not None and stats.samples == 50
    ref = linregress(np.arange(50), values[-50:])
    assert stats.slope == pytest.approx(ref.slope)
    for span in (10, 50, 100):
        assert w.ema(span) == pytest.approx(_ema(values, span), rel=1e-12)


def test_non_finite_values_are_ignored() -> None:
    w = TrendWindow(window=30, min_samples=2)
    assert w.add(float("nan")) is False and w.add(float("inf")) is False
    w.add(1.0)
    w.add(2.0)
    assert w.samples == 2 and w.ema(10) == pytest.approx(1.0 + 2 / 11)


def test_per_expert_split_matches_separate_fits() -> None:
    rng = np.random.default_rng(1)
    tracker = TrendTracker(window=200)
    high, low, both = [], [], []
    for step in range(300):
        expert = "high_noise" if (step // 10) % 2 == 0 else "low_noise"
        loss = (0.3 if expert == "high_noise" else 0.08) + rng.normal(0, 0.005)
        tracker.add_loss(loss, expert)
        tracker.add_gradient_stability(0.5 + 0.001 * step, expert)
        tracker.add_grad_norm(1.0 + step, expert)
        (high if expert == "high_noise" else low).append(loss)
        both.append(loss)
    m = tracker.metrics()
    assert (
        m["loss_samples"] == 200
        and m["loss_samples_high_noise"] == 150
        and m["loss_samples_low_noise"] == 150
    )
    for key, series in (("", both[-200:]), ("_high_noise", high), ("_low_noise", low)):
        ref = linregress(np.arange(len(series)), series)
        assert m[f"loss_slope{key}"] == pytest.approx(ref.slope, rel=1e-9, abs=1e-15)
        assert m[f"loss_r2{key}"] == pytest.approx(ref.rvalue**2, rel=1e-9, abs=1e-15)
        assert m[f"loss_cv{key}"] == pytest.approx(np.std(series) / np.mean(series), rel=1e-9)
    # per expert the levels are flat; the mixed window sees the expert switches as spread
    assert m["loss_cv_high_noise"] < 0.05 and m["loss_cv"] > 0.5
    assert m["loss_ema_10_high_noise"] == pytest.approx(_ema(high, 10))
    assert m["grad_norm_ema_50"] == pytest.approx(_ema([1.0 + s for s in range(300)], 50))
    assert m["grad_ema_100_low_noise"] is not None


def test_metrics_are_null_before_min_samples() -> None:
    tracker = TrendTracker(window=200)
    for _ in range(5):
        tracker.add_loss(0.1, "low_noise")
    m = tracker.metrics()
    assert m["loss_slope"] is None and m["loss_r2_low_noise"] is None and m["loss_samples_low_noise"] == 5
    assert m["loss_ema_10"] == 0.1 and m["loss_ema_10_high_noise"] is None


def test_state_round_trips_exactly_through_json() -> None:
    rng = np.random.default_rng(2)
    a, b = TrendTracker(window=40), TrendTracker(window=40)
    for step in range(60):
        a.add_loss(float(rng.random()), "high_noise" if step % 3 else "low_noise")
        a.add_gradient_stability(float(rng.random()), "low_noise")
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for step in range(30):
        for t in (a, b):
            t.add_loss(0.1 + step * 1e-3, "high_noise")
    assert a.metrics() == b.metrics()  # exact equality, floats included
    with pytest.raises(ValueError, match="experts"):
        TrendTracker(experts=("main",)).load_state_dict(a.state_dict())
