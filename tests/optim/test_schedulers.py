"""LR schedules: warmup then constant / cosine / linear, per-group ratios kept, exact state round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch

from cadence.config.errors import ConfigError
from cadence.optim import build_lr_scheduler, lr_factor
from cadence.optim.automagic import Automagic


def _opt(lrs=(4e-4, 1e-4)) -> torch.optim.Optimizer:
    """AdamW with one group per expert on real tensors (high noise at 4x low noise)."""
    groups = [
        {"params": [torch.nn.Parameter(torch.randn(3, 2))], "lr": lr, "expert": name, "name": name}
        for lr, name in zip(lrs, ("high_noise", "low_noise"), strict=True)
    ]
    return torch.optim.AdamW(groups, lr=1.0)


def _lrs_over(sched: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[list[float]]:
    """Group lrs used by each of the next `steps` optimizer steps."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        for group in sched.optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        sched.optimizer.step()
        sched.step()
    return out


def test_constant_with_warmup_from_zero() -> None:
    factors = [lr_factor("constant", 10, 4)(s) for s in range(7)]
    assert factors == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_values_at_known_steps() -> None:
    f = lr_factor("cosine", total_steps=12, warmup_steps=2)
    assert [f(0), f(1), f(2)] == [0.0, 0.5, 1.0]
    assert f(7) == pytest.approx(0.5)  # half-way through the decay
    assert f(2 + 10 / 3) == pytest.approx(0.75)  # cos(pi/3) = 0.5
    assert f(12) == pytest.approx(0.0, abs=1e-12) and f(20) == pytest.approx(0.0, abs=1e-12)
    g = lr_factor("cosine", total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    assert g(7) == pytest.approx(0.55) and g(12) == pytest.approx(0.1)


def test_linear_values_at_known_steps() -> None:
    f = lr_factor("linear", total_steps=10, warmup_steps=0)
    assert [f(s) for s in (0, 5, 9, 10, 11)] == pytest.approx([1.0, 0.5, 0.1, 0.0, 0.0])
    g = lr_factor("linear", total_steps=10, warmup_steps=2, min_lr_ratio=0.2)
    assert [g(1), g(2), g(6), g(10)] == pytest.approx([0.5, 1.0, 0.6, 0.2])


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_scheduler_scales_every_group_keeping_expert_ratio(kind: str) -> None:
    sched = build_lr_scheduler(_opt(), kind, total_steps=8, warmup_steps=2, params={})
    used = _lrs_over(sched, 8)
    factor = lr_factor(kind, 8, 2)
    for step, (high, low) in enumerate(used):
        assert high == pytest.approx(4e-4 * factor(step), abs=1e-15)
        assert low == pytest.approx(1e-4 * factor(step), abs=1e-15)
        if low:
            assert high / low == pytest.approx(4.0)
    assert used[0] == [0.0, 0.0] and used[2] == pytest.approx([4e-4, 1e-4])


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
def test_state_dict_round_trip_is_exact(kind: str) -> None:
    torch.manual_seed(0)
    straight = build_lr_scheduler(_opt(), kind, 10, 3, {"min_lr_ratio": 0.05} if kind != "constant" else {})
    expected = _lrs_over(straight, 10)

    torch.manual_seed(0)
    first = build_lr_scheduler(_opt(), kind, 10, 3, {"min_lr_ratio": 0.05} if kind != "constant" else {})
    head = _lrs_over(first, 4)
    buffer = io.BytesIO()
    torch.save({"opt": first.optimizer.state_dict(), "sched": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = build_lr_scheduler(_opt(), kind, 10, 3, {"min_lr_ratio": 0.05} if kind != "constant" else {})
    resumed.optimizer.load_state_dict(saved["opt"])
    resumed.load_state_dict(saved["sched"])
    assert head + _lrs_over(resumed, 6) == expected  # exact float equality


def test_automagic_allows_only_constant_without_warmup() -> None:
    param = torch.nn.Parameter(torch.zeros(4, 4))
    sched = build_lr_scheduler(Automagic([param]), "constant", 10, 0, {})
    assert sched.get_last_lr() == [1e-6]
    with pytest.raises(ConfigError) as err:
        build_lr_scheduler(Automagic([param]), "cosine", 10, 5, {})
    text = str(err.value)
    assert "train.lr_scheduler" in text and "train.lr_warmup_steps" in text and "constant" in text


@pytest.mark.parametrize(
    "kind,params,path",
    [
        ("constant", {"min_lr_ratio": 0.1}, "train.lr_scheduler_params.min_lr_ratio"),
        ("cosine", {"num_cycles": 2}, "train.lr_scheduler_params.num_cycles"),
        ("linear", {"min_lr_ratio": 1.5}, "train.lr_scheduler_params.min_lr_ratio"),
        ("step", {}, "train.lr_scheduler"),
    ],
)
def test_bad_scheduler_settings_are_clear_errors(kind: str, params: dict, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        build_lr_scheduler(_opt(), kind, 10, 0, params)


def test_cosine_is_smooth_and_monotone_after_warmup() -> None:
    f = lr_factor("cosine", 100, 10)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[45] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_every_expert_gets_its_warmup_when_experts_take_turns() -> None:
    """Turns of 3 steps, high noise first: each expert's own first 4 steps ramp 0, 1/4, 2/4, 3/4."""
    sched = build_lr_scheduler(
        _opt((1e-4, 1e-4)), "cosine", 24, 4, {}, rotation=(["high_noise", "low_noise"], 3)
    )
    used = _lrs_over(sched, 12)
    turns = ["high_noise"] * 3 + ["low_noise"] * 3 + ["high_noise"] * 3 + ["low_noise"] * 3
    applied = {"high_noise": [], "low_noise": []}
    for step, expert in enumerate(turns):  # the lr of the expert that trains at this step
        applied[expert].append(used[step][0 if expert == "high_noise" else 1] / 1e-4)
    decay = lr_factor("cosine", 24, 4)
    assert applied["high_noise"][:4] == pytest.approx([0, 0.25, 0.5, 0.75])
    assert applied["low_noise"][:4] == pytest.approx([0, 0.25, 0.5, 0.75])
    assert applied["high_noise"][4:] == pytest.approx([decay(7), decay(8)])  # then the run's decay


# ------------------------------------------------------------------ ai-toolkit's schedules vs torch / diffusers
def _reference_lrs(make, steps: int, lr: float = 1e-4) -> list[float]:
    """The lr each optimizer step uses under a torch/diffusers scheduler built by `make(optimizer)`."""
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _ours(kind: str, steps: int, warmup: int, params: dict, lr: float = 1e-4) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=lr)
    sched = build_lr_scheduler(opt, kind, steps, warmup, params)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_every_ai_toolkit_schedule_matches_torch_or_diffusers() -> None:
    from diffusers.optimization import (
        get_constant_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
    )
    from torch.optim import lr_scheduler as tl

    cases = [
        (
            "cosine_with_restarts",
            {"T_0": 5, "T_mult": 2, "eta_min": 1e-5},
            0,
            lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=1e-5),
        ),
        ("cosine_with_restarts", {"T_0": 7}, 0, lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=7)),
        ("step", {"step_size": 3, "gamma": 0.5}, 0, lambda o: tl.StepLR(o, step_size=3, gamma=0.5)),
        ("step", {"step_size": 4}, 0, lambda o: tl.StepLR(o, step_size=4)),
        (
            "polynomial",
            {"num_warmup_steps": 3, "lr_end": 1e-6, "power": 2.0},
            0,
            lambda o: get_polynomial_decay_schedule_with_warmup(o, 3, 30, lr_end=1e-6, power=2.0),
        ),
        (
            "polynomial",
            {"num_training_steps": 20},
            2,
            lambda o: get_polynomial_decay_schedule_with_warmup(o, 2, 20),
        ),
        (
            "constant_with_warmup",
            {"num_warmup_steps": 4},
            0,
            lambda o: get_constant_schedule_with_warmup(o, 4),
        ),
        ("constant_with_warmup", {}, 6, lambda o: get_constant_schedule_with_warmup(o, 6)),
        ("cosine", {"eta_min": 2e-5}, 0, lambda o: tl.CosineAnnealingLR(o, T_max=30, eta_min=2e-5)),
        (
            "linear",
            {"start_factor": 0.25, "end_factor": 1.0},
            0,
            lambda o: tl.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=30),
        ),
    ]
    for kind, params, warmup, make in cases:
        expected = _reference_lrs(make, 30)
        assert _ours(kind, 30, warmup, params) == pytest.approx(expected, rel=1e-9, abs=1e-15), (kind, params)


def test_constant_with_warmup_defaults_to_ai_toolkits_1000_steps() -> None:
    factor = build_lr_scheduler(_opt(), "constant_with_warmup", 3000, 0, {}).lr_lambdas[0]
    assert [factor(s) for s in (0, 500, 1000, 2000)] == [0.0, 0.5, 1.0, 1.0]


def test_new_schedules_keep_each_experts_own_warmup() -> None:
    """Experts in turns of 2: each warms up over its own first 4 steps under every schedule."""
    for kind, params in (("constant_with_warmup", {}), ("polynomial", {}), ("step", {"step_size": 5})):
        sched = build_lr_scheduler(
            _opt((1e-4, 1e-4)), kind, 40, 4, params, rotation=(["high_noise", "low_noise"], 2)
        )
        used = _lrs_over(sched, 8)
        turns = ["high_noise"] * 2 + ["low_noise"] * 2 + ["high_noise"] * 2 + ["low_noise"] * 2
        own = {"high_noise": [], "low_noise": []}
        for step, expert in enumerate(turns):
            own[expert].append(used[step][0 if expert == "high_noise" else 1] / 1e-4)
        assert own["high_noise"] == pytest.approx([0, 0.25, 0.5, 0.75]), kind
        assert own["low_noise"] == pytest.approx([0, 0.25, 0.5, 0.75]), kind


@pytest.mark.parametrize(
    "kind,params,warmup,path,text",
    [
        ("step", {}, 0, "train.lr_scheduler_params", "needs step_size"),
        ("step", {"step_size": 0}, 0, "train.lr_scheduler_params.step_size", ">= 1"),
        (
            "constant_with_warmup",
            {"num_warmup_steps": 5},
            3,
            "train.lr_scheduler_params.num_warmup_steps",
            "keep one",
        ),
        ("polynomial", {"lr_end": 1e-3}, 0, "train.lr_scheduler_params.lr_end", "below the learning rate"),
        (
            "cosine",
            {"T_0": 10},
            0,
            "train.lr_scheduler_params.T_0",
            "belongs to lr_scheduler cosine_with_restarts",
        ),
        ("cosine", {"total_iters": 10}, 0, "train.lr_scheduler_params.total_iters", "train.steps"),
        ("cosine_with_restarts", {"T_mult": 1.5}, 0, "train.lr_scheduler_params.T_mult", "whole number"),
        (
            "cosine",
            {"eta_min": 1e-6, "min_lr_ratio": 0.1},
            0,
            "train.lr_scheduler_params.eta_min",
            "keep one",
        ),
        ("step", {"step_size": 5, "gama": 0.5}, 0, "train.lr_scheduler_params.gama", "did you mean 'gamma'"),
    ],
)
def test_schedule_parameters_are_checked(kind: str, params: dict, warmup: int, path: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_lr_scheduler(_opt(), kind, 30, warmup, params)
    issues = dict(err.value.issues)
    assert path in issues and text in issues[path], issues


def test_cosine_takes_newer_ai_toolkit_warmup_and_decay_steps() -> None:
    """num_warmup_steps ramps up, cosine_decay_steps ends the decay early and holds the floor."""
    from cadence.config.schedule_checks import resolved_warmup
    from cadence.optim.schedulers import decay_factor

    params = {"num_warmup_steps": 10, "cosine_decay_steps": 20, "eta_min": 0.1}
    assert resolved_warmup("cosine", 0, params) == 10
    factor = decay_factor("cosine", 100, 10, params, base_lr=1.0)
    assert factor(10) == 1.0
    assert abs(factor(20) - (0.1 + 0.9 * 0.5)) < 1e-9  # halfway through the 20 decay steps
    assert abs(factor(30) - 0.1) < 1e-9 and abs(factor(90) - 0.1) < 1e-9  # held at the floor
