"""Alpha phases: every exit criterion blocks on its own, per-expert state, targets, presets, exact resume."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from cadence.config.errors import ConfigError
from cadence.config.schema import AlphaSchedule
from cadence.metrics.trend import TrendStats, TrendTracker
from cadence.schedule.alpha_phases import AlphaPhaseScheduler
from cadence.schedule.alpha_presets import PRESET_CRITERIA

EXPERTS = ["high_noise", "low_noise"]
GOOD = TrendStats(slope=-2e-7, intercept=0.1, r2=0.05, cv=0.2, mean=0.1, samples=200, improvement_rate=0.004)
CRIT = {"loss_improvement_rate_below": 0.005, "min_gradient_stability": 0.5, "min_loss_r2": 0.01}


def _schedule(**extra) -> AlphaSchedule:
    phases = {
        "foundation": {"alpha": 8, "min_steps": 5, "exit_criteria": dict(CRIT)},
        "balance": {"alpha": 14, "min_steps": 5, "exit_criteria": dict(CRIT)},
        "emphasis": {"alpha": 20, "min_steps": 5},
    }
    return AlphaSchedule(**{"enabled": True, "linear_alpha": 16, "conv_alpha_phases": phases, **extra})


def _linear_only(schedule: AlphaSchedule | None = None) -> AlphaPhaseScheduler:
    return AlphaPhaseScheduler.from_config(schedule or _schedule(), EXPERTS, {"linear"}, base_linear_alpha=32)


def test_conv_phases_drive_linear_adapters_when_no_conv_is_trained(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cadence.schedule.alpha_phases"):
        sched = _linear_only()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "Linear adapters instead" in lines[0] and "foundation(8)" in lines[0]
    assert sched.current_alphas("high_noise") == {"linear": 8.0, "conv": None}
    transitions = [sched.observe(step, "high_noise", GOOD, 0.55) for step in range(1, 6)]
    assert transitions[:4] == [None] * 4  # min_steps 5
    t = transitions[4]
    assert (t.expert, t.from_phase, t.to_phase, t.step, t.steps_in_phase) == (
        "high_noise",
        "foundation",
        "balance",
        5,
        5,
    )
    assert t.alphas_before["linear"] == 8 and t.alphas_after["linear"] == 14
    assert t.evidence["min_gradient_stability"] == {
        "value": 0.55,
        "threshold": 0.5,
        "passed": True,
        "advisory": False,
    }
    assert t.evidence["loss_improvement_rate_below"]["value"] == 0.004
    assert (
        sched.current_alphas("high_noise")["linear"] == 14
        and sched.current_alphas("low_noise")["linear"] == 8
    )
    m = sched.metrics("high_noise")
    assert m["phase"] == "balance" and m["phase_idx"] == 1 and m["steps_in_phase"] == 0 and m["alpha_enabled"]
    assert m["phase_low_noise"] == "foundation" and m["linear_alpha_low_noise"] == 8


def test_conv_trained_keeps_linear_fixed() -> None:
    sched = AlphaPhaseScheduler.from_config(_schedule(), EXPERTS, {"linear", "conv"}, 32, 64)
    assert sched.current_alphas("low_noise") == {"linear": 16.0, "conv": 8.0}


BLOCKERS = {
    "min_steps": dict(steps=4),
    "still improving": dict(stats=dataclasses.replace(GOOD, improvement_rate=0.02)),
    "rising loss": dict(stats=dataclasses.replace(GOOD, improvement_rate=-0.02)),
    "gradient stability": dict(stability=0.49),
    "no stability yet": dict(stability=None),
    "r2": dict(stats=dataclasses.replace(GOOD, r2=0.005)),
    "cv": dict(stats=dataclasses.replace(GOOD, cv=0.5)),
    "too few samples": dict(stats=None),
}


@pytest.mark.parametrize("name", list(BLOCKERS))
def test_each_criterion_blocks_on_its_own(name: str) -> None:
    case = {"steps": 5, "stats": GOOD, "stability": 0.55, **BLOCKERS[name]}
    sched = _linear_only()
    results = [
        sched.observe(s, "low_noise", case["stats"], case["stability"]) for s in range(1, case["steps"] + 1)
    ]
    assert results == [None] * case["steps"]
    assert sched.state["low_noise"].phase_idx == 0
    # the same stream with the one bad value fixed transitions (so the test can fail)
    ok = _linear_only()
    assert [ok.observe(s, "low_noise", GOOD, 0.55) for s in range(1, 6)][-1] is not None


def test_advisory_criterion_is_reported_but_does_not_block() -> None:
    crit = dict(CRIT, advisory=["min_loss_r2"])
    sched = _linear_only(
        _schedule(
            alpha_phases=None,
            conv_alpha_phases={"a": {"alpha": 4, "min_steps": 1, "exit_criteria": crit}, "b": {"alpha": 8}},
        )
    )
    t = sched.observe(1, "high_noise", dataclasses.replace(GOOD, r2=0.0), 0.6)
    assert t is not None
    assert t.evidence["min_loss_r2"] == {"value": 0.0, "threshold": 0.01, "passed": False, "advisory": True}


def test_steps_count_for_the_stepping_expert_and_last_phase_never_exits() -> None:
    sched = _linear_only()
    for step in range(1, 40):
        sched.observe(step, "high_noise", GOOD, 0.6)
    sched.observe(40, "low_noise", GOOD, 0.6)
    assert sched.state["high_noise"].phase_idx == 2 and sched.state["high_noise"].steps_in_phase == 29
    assert sched.state["low_noise"].phase_idx == 0 and sched.state["low_noise"].steps_in_phase == 1
    assert [t.to_phase for t in sched.history] == ["balance", "emphasis"]


def test_criteria_use_each_experts_own_statistics() -> None:
    """Mixed losses look noisy (high CV); each expert alone is a clean plateau and may transition."""
    rng = np.random.default_rng(0)
    tracker = TrendTracker(window=200)
    sched = _linear_only()
    for step in range(1, 201):
        expert = EXPERTS[(step // 10) % 2]
        level = 0.3 if expert == "high_noise" else 0.05
        tracker.add_loss(level * (1 + 0.01 * rng.standard_normal()), expert)
        sched.observe(step, expert, tracker.loss_stats(expert), 0.6)
    assert tracker.loss_stats().cv > 0.5  # the global window would block on CV
    assert {t.expert for t in sched.history} == set(EXPERTS)


def test_preset_fills_only_missing_criteria_and_provides_phases() -> None:
    sched = _linear_only(
        AlphaSchedule(
            enabled=True,
            preset="image",
            conv_alpha_phases={
                "a": {"alpha": 4, "exit_criteria": {"min_loss_r2": 0.3, "min_gradient_stability": None}},
                "b": {"alpha": 8},
            },
        )
    )
    crit = sched.plans["high_noise"].phases[0].exit_criteria
    assert crit.min_loss_r2 == 0.3 and crit.min_gradient_stability is None
    assert crit.loss_improvement_rate_below == PRESET_CRITERIA["image"]["loss_improvement_rate_below"]
    video = _linear_only(AlphaSchedule(enabled=True, preset="video"))
    assert [(p.name, p.alpha, p.min_steps) for p in video.plans["low_noise"].phases] == [
        ("foundation", 8, 2000),
        ("balance", 14, 3000),
        ("emphasis", 20, 2000),
    ]
    assert video.plans["low_noise"].phases[0].exit_criteria.min_gradient_stability == 0.5


def test_per_expert_override_and_alpha_phases_key() -> None:
    sched = AlphaPhaseScheduler.from_config(
        AlphaSchedule(
            enabled=True,
            alpha_phases={"x": {"alpha": 2, "min_steps": 1, "exit_criteria": CRIT}, "y": {"alpha": 3}},
            per_expert={
                "high_noise": {"alpha_phases": {"p": {"alpha": 5}, "q": {"alpha": 6}, "r": {"alpha": 7}}}
            },
        ),
        EXPERTS,
        {"linear", "conv"},
        16,
        16,
    )
    assert sched.current_alphas("high_noise") == {"linear": 5.0, "conv": 16.0}
    assert sched.current_alphas("low_noise") == {"linear": 2.0, "conv": 16.0}
    assert len(sched.plans["high_noise"].phases) == 3


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="network.alpha_schedule.*no phases"):
        _linear_only(AlphaSchedule(enabled=True))
    mismatched = _schedule(alpha_phases={"other": {"alpha": 1}})
    with pytest.raises(ConfigError, match="make them match"):
        AlphaPhaseScheduler.from_config(mismatched, EXPERTS, {"linear", "conv"}, 16, 16)


def test_disabled_schedule_reports_base_alphas() -> None:
    sched = AlphaPhaseScheduler.from_config(AlphaSchedule(enabled=False), ["main"], {"linear"}, 32)
    assert sched.observe(1, "main", GOOD, 0.9) is None
    assert sched.metrics() == {
        "alpha_enabled": False,
        "phase": None,
        "phase_idx": None,
        "steps_in_phase": None,
        "linear_alpha": 32,
        "conv_alpha": None,
    }


def test_resume_mid_phase_keeps_phase_steps_and_windows() -> None:
    rng = np.random.default_rng(5)
    losses = list(0.1 + 0.002 * rng.standard_normal(120))
    stability = list(0.5 + 0.1 * rng.random(120))

    def run(sched, tracker, steps):
        out = []
        for step in steps:
            expert = EXPERTS[step % 2]
            tracker.add_loss(losses[step], expert)
            t = sched.observe(step, expert, tracker.loss_stats(expert), stability[step])
            out.append(None if t is None else (t.expert, t.step, t.to_phase))
        return out

    crit = dict(CRIT, loss_improvement_rate_below=0.05, advisory=["min_loss_r2"])
    phases = {
        "a": {"alpha": 4, "min_steps": 10, "exit_criteria": crit},
        "b": {"alpha": 6, "min_steps": 40, "exit_criteria": crit},
        "c": {"alpha": 8},
    }

    def make():
        return _linear_only(_schedule(conv_alpha_phases=phases))

    straight = run(make(), TrendTracker(window=60), range(120))
    first_s, first_t = make(), TrendTracker(window=60)
    head = run(first_s, first_t, range(57))
    assert first_s.state["low_noise"].steps_in_phase > 0 and first_s.history  # mid-phase, after a transition
    saved = json.loads(json.dumps({"alpha": first_s.to_seed_json(), "trend": first_t.state_dict()}))
    second_s, second_t = make(), TrendTracker(window=60)
    second_s.load_state_dict(saved["alpha"])
    second_t.load_state_dict(saved["trend"])
    assert second_s.state_dict() == first_s.state_dict()
    assert head + run(second_s, second_t, range(57, 120)) == straight
    assert sum(t is not None for t in straight[57:]) >= 1  # a transition after the resume point


def test_seed_json_is_readable_and_seed_files_load() -> None:
    sched = _linear_only()
    for step in range(1, 8):
        sched.observe(step, "high_noise", GOOD, 0.6)
    js = sched.to_seed_json()
    assert js["current_phase_idx"] == 1 and js["current_phase"] == "balance" and js["steps_in_phase"] == 2
    assert js["transition_history"][0]["to_phase"] == "balance" and js["total_steps"] == 7
    assert js["per_expert"]["low_noise"]["current_alphas"]["linear"] == 8
    seed_file = {
        "enabled": True,
        "current_phase_idx": 1,
        "steps_in_phase": 300,
        "total_steps": 2300,
        "transition_history": [],
    }
    other = _linear_only()
    other.load_state_dict(seed_file)
    assert other.state["low_noise"].phase_idx == 1 and other.state["high_noise"].steps_in_phase == 300
    changed = _linear_only(_schedule(conv_alpha_phases={"only": {"alpha": 1}}))
    with pytest.raises(ValueError, match="config the run started with"):
        changed.load_state_dict(sched.state_dict())
