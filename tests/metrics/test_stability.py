"""Gradient stability against a direct numpy computation, random and identical signs, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cadence.metrics.stability import GradientStability


def _numpy_agreement(prev: list[np.ndarray], cur: list[np.ndarray]) -> float:
    a = np.concatenate([np.sign(x).ravel() for x in prev])
    b = np.concatenate([np.sign(x).ravel() for x in cur])
    both = (a != 0) & (b != 0)
    return float(((a == b) & both).sum() / both.sum())


def test_random_independent_updates_give_one_half() -> None:
    gen = torch.Generator().manual_seed(0)
    gs = GradientStability()
    shapes = [(200, 250), (50_000,)]  # 100k elements over two tensors
    assert gs.observe("high_noise", [torch.randn(s, generator=gen) for s in shapes]) is None  # first step
    value = gs.observe("high_noise", [torch.randn(s, generator=gen) for s in shapes])
    assert value == pytest.approx(0.5, abs=0.01)


def test_identical_signs_give_one() -> None:
    gs = GradientStability()
    update = [torch.rand(10, 10) + 0.1, -torch.rand(7) - 0.1]
    gs.observe("low_noise", update)
    assert gs.observe("low_noise", [u * 3 for u in update]) == 1.0
    assert gs.observe("low_noise", [-u for u in update]) == 0.0


def test_matches_numpy_and_weights_by_element_count_excluding_zeros() -> None:
    rng = np.random.default_rng(3)
    steps = []
    for _ in range(3):
        tensors = [rng.normal(size=(30, 4)), rng.normal(size=(5,)), rng.normal(size=(2, 3, 3))]
        tensors[0][rng.random((30, 4)) < 0.2] = 0.0  # zero updates are excluded
        steps.append(tensors)
    gs = GradientStability()
    values = [gs.observe("high_noise", [torch.from_numpy(t) for t in s]) for s in steps]
    assert values[0] is None
    assert values[1] == pytest.approx(_numpy_agreement(steps[0], steps[1]), abs=1e-15)
    assert values[2] == pytest.approx(_numpy_agreement(steps[1], steps[2]), abs=1e-15)
    m = gs.metrics()
    assert m["gradient_stability"] == values[2]
    assert m["gradient_stability_avg"] == pytest.approx((values[1] + values[2]) / 2)
    assert m["gradient_stability_high_noise"] == values[2] and m["gradient_stability_low_noise"] is None


def test_snapshot_api_measures_the_real_parameter_update_per_expert() -> None:
    torch.manual_seed(0)
    models = {"high_noise": torch.nn.Linear(8, 4), "low_noise": torch.nn.Linear(8, 4)}
    opts = {e: torch.optim.SGD(m.parameters(), lr=0.1) for e, m in models.items()}
    gs = GradientStability(avg_window=3)
    x = torch.randn(16, 8)
    seen = {"high_noise": [], "low_noise": []}
    for step in range(6):
        expert = "high_noise" if step % 2 == 0 else "low_noise"
        params = list(models[expert].parameters())
        before = [p.detach().clone() for p in params]
        opts[expert].zero_grad()
        models[expert](x).pow(2).mean().backward()
        gs.before_step(expert, params)
        opts[expert].step()
        value = gs.after_step(expert, params)
        updates = [(p.detach() - b).numpy() for p, b in zip(params, before, strict=True)]
        if seen[expert]:
            assert value == pytest.approx(_numpy_agreement(seen[expert][-1], updates))
        else:
            assert value is None  # each expert's first step compares nothing, even after the other stepped
        seen[expert].append(updates)
    assert gs.average("low_noise") is not None and len(gs._history) == 3  # rolling window of 3


def test_state_dict_restores_signs_and_history_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    a = GradientStability(avg_window=4)
    for i in range(5):
        a.observe("high_noise" if i % 2 else "low_noise", [torch.randn(20, generator=gen)])
    b = GradientStability()
    state = a.state_dict()
    b.load_state_dict(state)
    nxt = [torch.randn(20, generator=gen)]
    assert a.observe("high_noise", nxt) == b.observe("high_noise", nxt)
    assert a.metrics() == b.metrics()
    assert state["prev_signs"]["low_noise"][0].dtype == torch.int8


def test_shape_change_is_an_error() -> None:
    gs = GradientStability()
    gs.observe("high_noise", [torch.ones(3)])
    with pytest.raises(ValueError, match="changed shape"):
        gs.observe("high_noise", [torch.ones(4)])
