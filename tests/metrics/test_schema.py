"""The shipped metrics-line JSON Schema accepts the lines the metric parts produce and rejects typos."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
import torch

from cadence.config.schema import AlphaSchedule
from cadence.metrics.stability import GradientStability
from cadence.metrics.trend import TrendTracker
from cadence.schedule.alpha_phases import AlphaPhaseScheduler


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    text = resources.files("cadence.metrics").joinpath("metrics_line.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _line(step: int = 30) -> dict:
    tracker, stability = TrendTracker(window=200), GradientStability()
    sched = AlphaPhaseScheduler.from_config(
        AlphaSchedule(enabled=True, preset="video"), ["high_noise", "low_noise"], {"linear"}, 16
    )
    gen = torch.Generator().manual_seed(0)
    for s in range(step):
        expert = "high_noise" if s % 2 else "low_noise"
        tracker.add_loss(0.1 + 0.01 * float(torch.rand(1, generator=gen)), expert)
        value = stability.observe(expert, [torch.randn(50, generator=gen)])
        tracker.add_gradient_stability(value, expert)
        tracker.add_grad_norm(0.5, expert)
        sched.observe(s, expert, tracker.loss_stats(expert), stability.average(expert))
    line = {
        "step": step,
        "timestamp": "2025-10-29T18:19:46.510064",
        "loss": 0.087,
        "expert": "high_noise",
        "t": 0.93,
        "grad_norm": 0.41,
        "lr_high_noise": 1e-4,
        "lr_low_noise": 5e-5,
        "lr_0": 1e-4,
        "nan_skipped": 0,
        "weight_magnitude_high_noise": 0.0056,
        "weight_magnitude_low_noise": 0.0047,
        "weight_ratio": 1.19,
        "eval_loss": 0.09,
        "eval_loss_high_noise": 0.1,
        "health_warnings": [],
    }
    line.update(tracker.metrics())
    line.update(stability.metrics())
    line.update(sched.metrics("high_noise"))
    return json.loads(json.dumps(line, allow_nan=False))


def test_lines_from_the_metric_parts_validate(validator) -> None:
    for step in (1, 50):  # before and after the 20-sample minimum (nulls, then numbers)
        line = _line(step)
        errors = [e.message for e in validator.iter_errors(line)]
        assert errors == []
    assert isinstance(line["loss_r2_high_noise"], float) and line["phase"] == "foundation"


def test_seed_example_line_and_skipped_step_validate(validator) -> None:
    seed = {
        "step": 2500,
        "timestamp": "2025-10-29T18:19:46.510064",
        "loss": 0.087,
        "gradient_stability": 0.51,
        "expert": None,
        "lr_0": 7.06e-05,
        "lr_1": 0.0,
        "alpha_enabled": True,
        "phase": "balance",
        "phase_idx": 1,
        "steps_in_phase": 500,
        "conv_alpha": 14,
        "linear_alpha": 16,
        "loss_slope": 0.00023,
        "loss_r2": 0.007,
        "loss_samples": 200,
        "gradient_stability_avg": 0.507,
    }
    validator.validate(seed)
    validator.validate(
        {"step": 3, "timestamp": "2025-01-01T00:00:00", "loss": None, "expert": "low_noise", "nan_skipped": 1}
    )


@pytest.mark.parametrize(
    "change",
    [
        {"gradient_stabilty": 0.5},  # typo'd field name
        {"expert": "main"},
        {"gradient_stability": 1.2},
        {"loss_samples": 1.5},
        {"timestamp": "yesterday"},
        {"health_warnings": "low weight growth"},
        {"lr_high_noise": "1e-4"},
    ],
)
def test_bad_lines_fail(validator, change: dict) -> None:
    line = _line(25)
    line.update(change)
    assert not validator.is_valid(line)


def test_required_fields(validator) -> None:
    line = _line(25)
    del line["timestamp"]
    assert not validator.is_valid(line)
