"""build_optimizer / build_param_groups / clip_grad_norm on a real two-expert tiny Wan 2.2 I2V LoRA pair."""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass

import pytest
import torch

from cadence.config.errors import ConfigError
from cadence.config.schema import NetworkConfig, TrainConfig
from cadence.models.base import experts_for
from cadence.models.tiny import TEXT_DIM, _transformer
from cadence.networks.lora import LoRANetwork
from cadence.optim import (
    PerExpertOptimizer,
    build_lr_scheduler,
    build_optimizer,
    build_param_groups,
    clip_grad_norm,
    needs_train_eval_mode,
)
from cadence.optim.automagic import Automagic
from cadence.schedule import ExpertRouter, TimestepSampler
from cadence.train.objective import flow_matching_loss, noisy_latents, velocity_target

EXPERTS = {e.name: e for e in experts_for(True, 0.9)}


@pytest.fixture(scope="session")
def base_roots() -> dict[str, torch.nn.Module]:
    """Frozen tiny transformers (one per expert); tests deep-copy them before attaching LoRA."""
    roots = {}
    for index, name in enumerate(EXPERTS):
        torch.manual_seed(index)
        roots[name] = _transformer("wan22_14b_i2v").requires_grad_(False)
    return roots


@dataclass
class Rig:
    train: TrainConfig
    roots: dict[str, torch.nn.Module]
    nets: dict[str, LoRANetwork]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    router: ExpertRouter

    def params(self) -> list[torch.Tensor]:
        return [p for n in self.nets.values() for p in n.trainable_parameters()]


def make_rig(
    base_roots: dict[str, torch.nn.Module], train: TrainConfig, loraplus: float | None = None
) -> Rig:
    roots = {name: copy.deepcopy(root) for name, root in base_roots.items()}
    nets = {
        name: LoRANetwork(roots[name], NetworkConfig(linear=4), name=name, seed=3).apply() for name in roots
    }
    opt = build_optimizer(train, build_param_groups(nets, train, loraplus))
    sched = build_lr_scheduler(
        opt, train.lr_scheduler, train.steps, train.lr_warmup_steps, train.lr_scheduler_params
    )
    return Rig(train, roots, nets, opt, sched, ExpertRouter(list(nets), train.switch_boundary_every))


def expert_loss(rig: Rig, expert: str, step: int) -> torch.Tensor:
    """Flow-matching loss of one expert on a fixed random I2V batch for `step`."""
    gen = torch.Generator().manual_seed(1000 + step)
    spec = EXPERTS[expert]
    t = TimestepSampler(rig.train.timestep_type).sample(1, spec.t_low, spec.t_high, gen)
    x0 = torch.randn(1, 16, 1, 8, 8, generator=gen)
    noise = torch.randn(1, 16, 1, 8, 8, generator=gen)
    cond = torch.randn(1, 20, 1, 8, 8, generator=gen)
    text = torch.randn(1, 8, TEXT_DIM, generator=gen)
    hidden = torch.cat([noisy_latents(x0, noise, t), cond], dim=1)
    pred = rig.roots[expert](
        hidden_states=hidden, timestep=t * 1000, encoder_hidden_states=text, return_dict=False
    )[0]
    return flow_matching_loss(pred, velocity_target(x0, noise))


def train_steps(rig: Rig, start: int, stop: int) -> list[str]:
    """Optimizer steps start..stop-1 as the trainer runs them; returns the expert of each step."""
    labels = []
    for step in range(start, stop):
        expert = rig.router.current()
        labels.append(expert)
        expert_loss(rig, expert, step).backward()
        clip_grad_norm(rig.params(), rig.train.max_grad_norm)
        rig.opt.step()
        rig.sched.step()
        rig.opt.zero_grad(set_to_none=True)
        rig.router.advance()
    return labels


def _train(**kwargs) -> TrainConfig:
    return TrainConfig(**kwargs)


def _snapshot(rig: Rig) -> dict[str, torch.Tensor]:
    return {f"{e}.{k}": v.clone() for e, n in rig.nets.items() for k, v in n.state_dict().items()}


# ------------------------------------------------------------------------------------------- resume
RESUME_CASES = {
    "adamw": dict(optimizer="adamw", lr=1e-3, lr_scheduler="cosine", lr_warmup_steps=2),
    "prodigy": dict(
        optimizer="prodigy",
        lr_scheduler="linear",
        lr_warmup_steps=1,
        optimizer_params={"high_noise_lr": 2.0, "low_noise_lr": 0.5, "weight_decay": 0.01},
    ),
    "adamw_schedulefree": dict(
        optimizer="adamw_schedulefree", lr=2e-3, lr_warmup_steps=2, optimizer_params={"weight_decay": 0.01}
    ),
    "automagic": dict(
        optimizer="automagic",
        optimizer_params={"high_noise_lr_bump": 4e-6, "lr_bump": 1e-6, "min_lr": 1e-7, "max_lr": 1e-3},
    ),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_is_bit_exact_mid_block(base_roots, case: str) -> None:
    """6 steps straight == 3 steps, save everything, rebuild from scratch, load, 3 more (stop mid-block)."""
    train = _train(steps=6, switch_boundary_every=2, max_grad_norm=1.0, **RESUME_CASES[case])
    straight = make_rig(base_roots, train)
    start = _snapshot(straight)
    labels = train_steps(straight, 0, 6)
    assert labels == ["high_noise", "high_noise", "low_noise", "low_noise", "high_noise", "high_noise"]

    first = make_rig(base_roots, train)
    train_steps(first, 0, 3)
    buffer = io.BytesIO()
    torch.save(
        {
            "nets": {e: n.state_dict() for e, n in first.nets.items()},
            "opt": first.opt.state_dict(),
            "sched": first.sched.state_dict(),
            "router": first.router.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = make_rig(base_roots, train)
    for expert, net in resumed.nets.items():
        net.load_state_dict(saved["nets"][expert])
    resumed.opt.load_state_dict(saved["opt"])
    resumed.sched.load_state_dict(saved["sched"])
    resumed.router.load_state_dict(saved["router"])
    assert train_steps(resumed, 3, 6) == labels[3:]

    end, again = _snapshot(straight), _snapshot(resumed)
    for key in end:
        assert torch.equal(end[key], again[key]), key
    for expert in ("high_noise", "low_noise"):  # both experts really trained
        assert not torch.equal(
            end[f"{expert}.lora.blocks-0-attn1-to_q.up"], start[f"{expert}.lora.blocks-0-attn1-to_q.up"]
        )
    assert [g["lr"] for g in straight.opt.param_groups] == [g["lr"] for g in resumed.opt.param_groups]


# --------------------------------------------------------------------------------------- idle expert
def _param_state(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    owners = opt.inner.values() if isinstance(opt, PerExpertOptimizer) else [opt]
    for owner in owners:
        if p in owner.state:
            return copy.deepcopy(dict(owner.state[p]))
    return {}


def _group_stats(opt: torch.optim.Optimizer, expert: str) -> list[dict]:
    return [
        {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
        for g in opt.param_groups
        if g["expert"] == expert
    ]


@pytest.mark.parametrize("case", RESUME_CASES)
def test_idle_expert_params_state_and_statistics_untouched(base_roots, case: str) -> None:
    settings = dict(RESUME_CASES[case])
    settings.update(lr_scheduler="constant", lr_warmup_steps=0)
    params = dict(settings.get("optimizer_params", {}))
    params["weight_decay"] = 0.1  # decoupled decay would move idle params if the step touched them
    settings["optimizer_params"] = params
    rig = make_rig(base_roots, _train(steps=10, switch_boundary_every=1, **settings))
    train_steps(rig, 0, 2)  # high, low: both have optimizer state now
    low = rig.nets["low_noise"].trainable_parameters()
    before = [p.detach().clone() for p in low]
    state_before = [_param_state(rig.opt, p) for p in low]
    stats_before = _group_stats(rig.opt, "low_noise")
    assert all(state_before), "low_noise should have optimizer state after its step"

    assert train_steps(rig, 2, 3) == ["high_noise"]
    for p, b, s in zip(low, before, state_before, strict=True):
        assert torch.equal(p, b)
        after = _param_state(rig.opt, p)
        assert after.keys() == s.keys()
        for key, value in s.items():
            assert torch.equal(after[key], value) if torch.is_tensor(value) else after[key] == value, key
    assert _group_stats(rig.opt, "low_noise") == stats_before


# ------------------------------------------------------------------------------------ per-expert lr
def test_high_noise_lr_four_times_low_in_groups_and_in_a_step(base_roots) -> None:
    train = _train(
        steps=4,
        switch_boundary_every=1,
        optimizer="adamw",
        optimizer_params={"high_noise_lr": 4e-4, "low_noise_lr": 1e-4, "weight_decay": 0.0},
    )
    rig = make_rig(base_roots, train)
    assert [(g["name"], g["expert"], g["lr"]) for g in rig.opt.param_groups] == [
        ("high_noise", "high_noise", 4e-4),
        ("low_noise", "low_noise", 1e-4),
    ]
    before = _snapshot(rig)
    train_steps(rig, 0, 2)
    after = _snapshot(rig)
    # Adam's first step moves each element by lr * g / (|g| + eps): the largest move is the lr.
    moves = {
        e: max(float((after[k] - before[k]).abs().max()) for k in before if k.startswith(e))
        for e in ("high_noise", "low_noise")
    }
    assert moves["high_noise"] == pytest.approx(4e-4, rel=1e-3)
    assert moves["low_noise"] == pytest.approx(1e-4, rel=1e-3)


def test_loraplus_groups_are_tagged_and_cover_all_params(base_roots) -> None:
    train = _train(lr=1e-4, optimizer_params={"high_noise_lr": 4e-4})
    rig = make_rig(base_roots, train, loraplus=16.0)
    groups = rig.opt.param_groups
    assert [(g["name"], g["expert"], g["lr"]) for g in groups] == [
        ("high_noise", "high_noise", 4e-4),
        ("high_noise_up", "high_noise", pytest.approx(6.4e-3)),
        ("low_noise", "low_noise", 1e-4),
        ("low_noise_up", "low_noise", pytest.approx(1.6e-3)),
    ]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in rig.params()) and len(set(grouped)) == len(grouped)
    up_ids = {id(m.up) for m in rig.nets["low_noise"].modules_by_name.values()}
    assert {id(p) for p in groups[3]["params"]} == up_ids


def test_single_expert_uses_train_lr(base_roots) -> None:
    nets = {
        "main": LoRANetwork(copy.deepcopy(base_roots["high_noise"]), NetworkConfig(linear=2), name="main")
    }
    groups = build_param_groups(nets, _train(lr=3e-4), None)
    assert [(g["name"], g["expert"], g["lr"]) for g in groups] == [("main", "main", 3e-4)]


# ------------------------------------------------------------------------------------------ choices
def test_schedulefree_needs_train_eval_and_switches_points(base_roots) -> None:
    rig = make_rig(base_roots, _train(optimizer="adamw_schedulefree", lr=1e-2, steps=4))
    assert needs_train_eval_mode(rig.opt)
    train_steps(rig, 0, 4)  # after one step per expert x == y == z; the second step separates them
    y = _snapshot(rig)
    rig.opt.eval()
    x = _snapshot(rig)
    assert any(not torch.equal(y[k], x[k]) for k in y)
    rig.opt.train()
    assert all(torch.allclose(y[k], v, atol=1e-7) for k, v in _snapshot(rig).items())
    assert not needs_train_eval_mode(make_rig(base_roots, _train()).opt)


def test_prodigy_lr_default_and_small_lr_warning(base_roots, caplog) -> None:
    rig = make_rig(base_roots, _train(optimizer="prodigy"))
    assert [g["lr"] for g in rig.opt.param_groups] == [1.0, 1.0]
    with caplog.at_level(logging.WARNING, logger="cadence.optim.factory"):
        rig = make_rig(base_roots, _train(optimizer="prodigy", lr=1e-4))
    assert [g["lr"] for g in rig.opt.param_groups] == [1e-4, 1e-4]
    assert "expects lr around 1.0" in caplog.text


def test_automagic_gets_per_expert_bounds(base_roots) -> None:
    rig = make_rig(
        base_roots,
        _train(
            optimizer="automagic",
            optimizer_params={
                "high_noise_lr_bump": 2e-5,
                "high_noise_max_lr": 5e-4,
                "low_noise_lr_bump": 5e-6,
                "low_noise_max_lr": 1e-4,
            },
        ),
    )
    assert isinstance(rig.opt, Automagic)
    assert [(g["expert"], g["lr_bump"], g["max_lr"]) for g in rig.opt.param_groups] == [
        ("high_noise", 2e-5, 5e-4),
        ("low_noise", 5e-6, 1e-4),
    ]


@pytest.mark.parametrize(
    "settings,path,hint",
    [
        (dict(optimizer="adamw", optimizer_params={"beta3": 0.9}), "train.optimizer_params.beta3", "betas"),
        (
            dict(optimizer="adamw", optimizer_params={"high_noise_lr_bump": 1e-5}),
            "train.optimizer_params.high_noise_lr_bump",
            "weight_decay",
        ),
        (
            dict(optimizer="adamw_schedulefree", optimizer_params={"d0": 1e-6}),
            "train.optimizer_params.d0",
            "warmup_steps",
        ),
        (
            dict(optimizer="adamw", optimizer_params={"betas": [0.9]}),
            "train.optimizer_params.betas",
            "two numbers",
        ),
        (
            dict(optimizer="automagic", optimizer_params={"momentum": 0.9}),
            "train.optimizer_params.momentum",
            "lr_bump",
        ),
        (dict(optimizer="adamw8bit"), "train.optimizer", "optimizer: adamw"),
    ],
)
def test_bad_settings_are_clear_errors(base_roots, settings: dict, path: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_rig(base_roots, _train(**settings))
    assert path in str(err.value) and hint in str(err.value)


def test_prodigy_refuses_loraplus(base_roots) -> None:
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        make_rig(base_roots, _train(optimizer="prodigy"), loraplus=4.0)


# ----------------------------------------------------------------------------------------- clipping
def test_clip_grad_norm_reports_and_clips(base_roots) -> None:
    rig = make_rig(base_roots, _train())
    expert_loss(rig, "high_noise", 0).backward()
    params = rig.params()
    grads = [p.grad.clone() for p in params if p.grad is not None]
    expected = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
    assert expected > 0 and all(p.grad is None for p in rig.nets["low_noise"].trainable_parameters())

    assert clip_grad_norm(params, 0.0) == pytest.approx(expected, rel=1e-6)
    assert all(
        torch.equal(g, p.grad) for g, p in zip(grads, [p for p in params if p.grad is not None], strict=True)
    )

    assert clip_grad_norm(params, expected / 4) == pytest.approx(expected, rel=1e-6)
    assert clip_grad_norm(params, 0.0) == pytest.approx(expected / 4, rel=1e-4)

    params[0].grad = torch.full_like(params[0], float("inf"))
    kept = params[1].grad.clone()
    assert clip_grad_norm(params, 1.0) == float("inf")
    assert torch.equal(params[1].grad, kept)
    assert clip_grad_norm([], 1.0) == 0.0


def test_bad_expert_lr_is_a_config_error(base_roots) -> None:
    with pytest.raises(ConfigError, match=r"train\.optimizer_params\.low_noise_lr"):
        make_rig(base_roots, _train(optimizer_params={"low_noise_lr": "fast"}))
