"""Automagic against a direct numpy implementation of its formulas, idle experts, exact resume."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from cadence.optim.automagic import Automagic, automagic_groups_from_params


class RefParam:
    """The published algorithm written out in float64 numpy, one parameter at a time."""

    def __init__(self, p: np.ndarray, lr: float) -> None:
        self.p = p.astype(np.float64)
        self.mask = np.full(p.shape, lr)
        self.last_sign = None
        self.last_step = None
        if p.ndim >= 2:
            self.row, self.col = np.zeros(p.shape[0]), np.zeros(p.shape[1])
        else:
            self.v = np.zeros(p.shape)

    def step(self, g: np.ndarray, step_no: int, o: dict) -> None:
        g = g.astype(np.float64)
        b = o["beta2"]
        sq = g * g + 1e-30
        if self.p.ndim >= 2:
            self.row = b * self.row + (1 - b) * sq.mean(axis=1)
            self.col = b * self.col + (1 - b) * sq.mean(axis=0)
            u = g / np.sqrt(np.outer(self.row / self.row.mean(), self.col))
        else:
            self.v = b * self.v + (1 - b) * sq
            u = g / np.sqrt(self.v)
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / o["clip_threshold"])
        sign = u > 0
        if self.last_sign is not None:  # compare with this parameter's own previous update
            self.mask = np.where(sign == self.last_sign, self.mask + o["lr_bump"], self.mask - o["lr_bump"])
        self.mask = np.clip(self.mask, o["min_lr"], o["max_lr"])
        self.last_sign, self.last_step = sign, step_no
        self.p = self.p - o["weight_decay"] * self.mask * self.p
        self.p = self.p - self.mask * u


OPTS = dict(lr=1e-4, min_lr=5e-5, max_lr=2e-4, lr_bump=2e-5, beta2=0.9, clip_threshold=1.0, weight_decay=0.01)


def test_matches_reference_formulas_for_matrix_and_vector() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=gen))
    b = torch.nn.Parameter(torch.randn(4, generator=gen))
    opt = Automagic([w, b], **OPTS)
    refs = [RefParam(w.detach().numpy(), OPTS["lr"]), RefParam(b.detach().numpy(), OPTS["lr"])]
    for step in range(1, 7):
        grads = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
        for p, g, ref in zip((w, b), grads, refs, strict=True):
            p.grad = g.clone()
            ref.step(g.numpy(), step, OPTS)
        opt.step()
        for p, ref in zip((w, b), refs, strict=True):
            np.testing.assert_allclose(p.detach().numpy(), ref.p, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(opt.state[p]["lr_mask"].numpy(), ref.mask, rtol=1e-6)
    masks = np.concatenate([r.mask.ravel() for r in refs])
    assert masks.min() < OPTS["lr"] < masks.max()  # bumps happened in both directions
    assert opt.get_avg_learning_rate() == pytest.approx(masks.mean(), rel=1e-6)  # element-weighted


def test_first_step_compares_no_signs() -> None:
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = Automagic([w], **OPTS)
    w.grad = torch.tensor([[1.0, -1.0], [2.0, -2.0], [0.5, -0.5]])
    opt.step()
    assert torch.all(opt.state[w]["lr_mask"] == OPTS["lr"])


def test_idle_expert_compares_with_its_own_last_update_and_uses_its_own_bounds() -> None:
    """An idle expert (grad None) is not touched; when it trains again its signs are compared with its own
    last update, not with anything that happened while it was idle (so alternating experts still adapt)."""
    gen = torch.Generator().manual_seed(1)
    high = torch.nn.Parameter(torch.randn(4, 4, generator=gen))
    low = torch.nn.Parameter(torch.randn(4, 4, generator=gen))
    groups = automagic_groups_from_params(
        {
            "lr_bump": 1e-5,
            "high_noise_lr_bump": 2e-5,
            "high_noise_min_lr": 2e-5,
            "high_noise_max_lr": 5e-4,
            "low_noise_min_lr": 5e-6,
            "low_noise_max_lr": 1e-4,
            "beta2": 0.9,
            "weight_decay": 0.0,
        },
        [{"params": [high], "expert": "high_noise"}, {"params": [low], "expert": "low_noise"}],
    )
    opt = Automagic(groups, lr=1e-4, clip_threshold=1.0)
    h_opts = dict(opt.param_groups[0])
    l_opts = dict(opt.param_groups[1])
    ref_h, ref_l = RefParam(high.detach().numpy(), 1e-4), RefParam(low.detach().numpy(), 1e-4)
    schedule = ["both", "both", "high", "high", "low", "low", "both"]
    for step, who in enumerate(schedule, start=1):
        high.grad = low.grad = None
        if who in ("both", "high"):
            g = torch.randn(4, 4, generator=gen)
            high.grad = g.clone()
            ref_h.step(g.numpy(), step, h_opts)
        if who in ("both", "low"):
            g = torch.randn(4, 4, generator=gen)
            low.grad = g.clone()
            mask_before = opt.state[low]["lr_mask"].clone() if low in opt.state else None
            ref_l.step(g.numpy(), step, l_opts)
        low_before = low.detach().clone()
        opt.step()
        if who == "high":  # the idle expert's weights and its whole optimizer state stay as they were
            assert torch.equal(low.detach(), low_before)
        if step == 5:  # low was idle at steps 3-4: its mask still adapts (one bump, then clamped)
            moved = (opt.state[low]["lr_mask"] - mask_before).abs()
            assert ((moved - 1e-5).abs() < 1e-9).float().mean() > 0.5 and moved.max() <= 1e-5 + 1e-9
        np.testing.assert_allclose(high.detach().numpy(), ref_h.p, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(low.detach().numpy(), ref_l.p, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(opt.state[high]["lr_mask"].numpy(), ref_h.mask, rtol=1e-6)
        np.testing.assert_allclose(opt.state[low]["lr_mask"].numpy(), ref_l.mask, rtol=1e-6)
    assert opt.state[high]["lr_mask"].max() <= 5e-4 and opt.state[high]["lr_mask"].min() >= 2e-5
    assert opt.state[low]["lr_mask"].max() <= 1e-4
    lrs = opt.get_learning_rates()
    assert lrs[0] == pytest.approx(float(ref_h.mask.mean()), rel=1e-6)
    assert lrs[1] == pytest.approx(float(ref_l.mask.mean()), rel=1e-6)


def _run(opt: Automagic, params: list[torch.nn.Parameter], gen: torch.Generator, steps: range) -> None:
    for step in steps:
        for i, p in enumerate(params):
            idle = (step + i) % 3 == 0  # some steps leave a tensor idle
            p.grad = None if idle else torch.randn(p.shape, generator=gen)
        opt.step()


def test_state_dict_round_trip_is_bitwise() -> None:
    def make() -> list[torch.nn.Parameter]:
        g = torch.Generator().manual_seed(7)
        return [
            torch.nn.Parameter(torch.randn(6, 3, generator=g)),
            torch.nn.Parameter(torch.randn(5, generator=g)),
        ]

    straight = make()
    opt = Automagic(
        [{"params": straight[:1], "expert": "high_noise"}, {"params": straight[1:], "lr_bump": 3e-6}], **OPTS
    )
    gen = torch.Generator().manual_seed(3)
    _run(opt, straight, gen, range(10))

    resumed = make()
    first = Automagic(
        [{"params": resumed[:1], "expert": "high_noise"}, {"params": resumed[1:], "lr_bump": 3e-6}], **OPTS
    )
    gen = torch.Generator().manual_seed(3)
    _run(first, resumed, gen, range(5))
    saved = torch.load(_save(first.state_dict()), weights_only=True)
    second = Automagic([{"params": resumed[:1], "expert": "high_noise"}, {"params": resumed[1:]}], **OPTS)
    second.load_state_dict(saved)
    assert second.param_groups[1]["lr_bump"] == 3e-6 and second._step_count == 5
    _run(second, resumed, gen, range(5, 10))
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)
        for key in opt.state[a]:
            va, vb = opt.state[a][key], second.state[b][key]
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb


def _save(state: dict):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_load_rejects_a_different_network() -> None:
    opt = Automagic([torch.nn.Parameter(torch.ones(2, 2))], **OPTS)
    other = Automagic([torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))], **OPTS)
    with pytest.raises(ValueError, match="tensors"):
        opt.load_state_dict(other.state_dict())


def test_group_mapping_plain_and_per_expert_keys() -> None:
    groups = automagic_groups_from_params(
        {"min_lr": 1e-6, "high_noise_min_lr": 2e-5, "low_noise_max_lr": 1e-4, "eps": [1e-30, 1e-3]},
        [{"params": [], "expert": "high_noise"}, {"params": [], "expert": "low_noise"}, {"params": []}],
    )
    assert groups[0]["min_lr"] == 2e-5 and "max_lr" not in groups[0]
    assert groups[1]["min_lr"] == 1e-6 and groups[1]["max_lr"] == 1e-4
    assert groups[2] == {"params": [], "min_lr": 1e-6, "eps": (1e-30, 1e-3)}
    with pytest.raises(ValueError, match="train.optimizer_params.high_noise_lr_bmp"):
        automagic_groups_from_params({"high_noise_lr_bmp": 1.0}, [])


def test_start_lr_above_limit_is_reset_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        opt = Automagic([torch.nn.Parameter(torch.ones(2))], lr=1e-2)
    assert opt.param_groups[0]["lr"] == 1e-6 and "1e-6" in caplog.text
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        Automagic([torch.nn.Parameter(torch.ones(2))], min_lr=1e-3, max_lr=1e-4)


def test_bf16_params_use_stochastic_rounding_reproducibly() -> None:
    """An update far below bf16 resolution survives on average instead of vanishing."""
    start = torch.full((200, 50), 1.0)

    def run(seed: int) -> torch.Tensor:
        w = torch.nn.Parameter(start.to(torch.bfloat16))
        opt = Automagic([w], lr=1e-3, min_lr=1e-3, max_lr=1e-3, lr_bump=0.0, rounding_seed=seed)
        w.grad = torch.ones_like(
            w
        )  # normalized update = 1 everywhere -> p -= 1e-3 (bf16 spacing below 1.0: 3.9e-3)
        opt.step()
        assert w.dtype == torch.bfloat16 and opt.state[w]["lr_mask"].dtype == torch.float32
        return w.detach().float()

    out = run(0)
    assert set(out.unique().tolist()) == {1.0, 1.0 - 2**-8}  # bf16 neighbours just below 1.0
    assert out.mean().item() == pytest.approx(1.0 - 1e-3, abs=2e-4)  # unbiased on average
    assert torch.equal(out, run(0)) and not torch.equal(out, run(1))
