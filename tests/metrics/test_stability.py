"""Gradient stability against a direct numpy computation and against the per-tensor definition it had before
issue 23 (flat vectors now), random and identical signs, exact resume, ops independent of the tensor count."""

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
        gs.after_step(expert, params)
        value = gs.latest(expert)
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


# ------------------------------------------------------------------------------ the definition before issue 23
class PerTensorStability:
    """The measurement as it was: a snapshot per tensor, int8 signs per tensor, counts summed over tensors."""

    def __init__(self) -> None:
        self.prev: dict[str, list[torch.Tensor]] = {}
        self.snap: list[torch.Tensor] = []

    def before(self, params: list[torch.Tensor]) -> None:
        self.snap = [p.detach().clone() for p in params]

    def after(self, expert: str, params: list[torch.Tensor]) -> float | None:
        signs = [torch.sign(p.detach() - b).to(torch.int8) for p, b in zip(params, self.snap, strict=True)]
        prev, self.prev[expert] = self.prev.get(expert), signs
        if prev is None:
            return None
        compared = sum(int(((a != 0) & (b != 0)).sum()) for a, b in zip(prev, signs, strict=True))
        agree = sum(int(((a == b) & (a != 0) & (b != 0)).sum()) for a, b in zip(prev, signs, strict=True))
        return agree / compared if compared else None


def _experts_with_mixed_dtypes() -> dict[str, list[torch.nn.Parameter]]:
    """Two experts of many small tensors, fp32 and bf16 mixed (two flat groups), conv-shaped ones too."""
    gen = torch.Generator().manual_seed(11)
    out = {}
    for expert in ("high_noise", "low_noise"):
        params = []
        for i in range(60):
            shape = [(4, 6), (6, 4), (3, 2, 1, 3, 3), (5,)][i % 4]
            dtype = torch.bfloat16 if i % 3 == 0 else torch.float32
            params.append(torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype)))
        out[expert] = params
    return out


def test_flat_vectors_give_exactly_the_per_tensor_values_through_real_optimizer_steps() -> None:
    experts = _experts_with_mixed_dtypes()
    opts = {e: torch.optim.AdamW(p, lr=1e-2) for e, p in experts.items()}
    new, old = GradientStability(avg_window=5), PerTensorStability()
    gen = torch.Generator().manual_seed(12)
    expected: dict[str, list[float | None]] = {e: [] for e in experts}
    for step in range(12):
        expert = "high_noise" if (step // 2) % 2 == 0 else "low_noise"  # turns of two steps
        params = experts[expert]
        for k, p in enumerate(params):  # some tensors get no gradient (zero updates are left out)
            p.grad = None if (step + k) % 7 == 0 else torch.randn(p.shape, generator=gen).to(p.dtype)
        new.before_step(expert, params)
        old.before(params)
        opts[expert].step()
        new.after_step(expert)
        expected[expert].append(old.after(expert, params))
        assert new.latest(expert) == expected[expert][-1]  # bit-equal floats, not approximately
        assert new.latest() == expected[expert][-1]
    values = [v for e in experts for v in expected[e] if v is not None]
    assert len(values) == 10 and len(set(values)) > 5  # real, varied measurements
    assert new.average("low_noise") == pytest.approx(
        sum(v for v in expected["low_noise"][-5:] if v is not None) / 5, rel=1e-12
    )


def test_reads_are_deferred_and_batched_until_a_value_is_asked_for() -> None:
    params = [torch.nn.Parameter(torch.randn(8, 3)) for _ in range(5)]
    gs, ref = GradientStability(), PerTensorStability()
    gen = torch.Generator().manual_seed(2)
    expected = []
    for _ in range(4):
        updates = [torch.randn(8, 3, generator=gen) for _ in params]
        gs.before_step("main", params)
        ref.before(params)
        with torch.no_grad():
            for p, u in zip(params, updates, strict=True):
                p.add_(u)
        gs.after_step("main", params)
        expected.append(ref.after("main", params))
    assert len(gs._pending) == 4  # nothing was read from the device yet
    assert gs.metrics(())["gradient_stability_avg"] == pytest.approx(sum(expected[1:]) / 3, rel=1e-12)
    assert gs._pending == [] and gs.latest("main") == expected[-1]


def test_state_dict_keeps_per_tensor_signs_and_resumes_from_them_exactly() -> None:
    params = _experts_with_mixed_dtypes()["high_noise"]
    opt = torch.optim.SGD(params, lr=0.1)
    gen = torch.Generator().manual_seed(5)

    def step(*trackers: GradientStability) -> None:
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        for gs in trackers:
            gs.before_step("high_noise", params)
        opt.step()
        for gs in trackers:
            gs.after_step("high_noise")

    a = GradientStability()
    step(a)
    step(a)
    state = a.state_dict()
    signs = state["prev_signs"]["high_noise"]
    assert [s.shape for s in signs] == [p.shape for p in params] and {s.dtype for s in signs} == {torch.int8}
    resumed = GradientStability()
    resumed.load_state_dict(state)  # per-tensor signs, as checkpoints before issue 23 hold them too
    step(a, resumed)
    assert a.latest("high_noise") is not None and a.latest("high_noise") == resumed.latest("high_noise")
    assert a.metrics() == resumed.metrics()


def test_ops_per_step_do_not_grow_with_the_tensor_count() -> None:
    def ops_of_a_step(count: int) -> int:
        params = [torch.nn.Parameter(torch.randn(4, 4)) for _ in range(count)]
        opt = torch.optim.SGD(params, lr=0.1)
        gs = GradientStability()
        for _ in range(2):  # warm: the first step takes the parameter views
            for p in params:
                p.grad = torch.ones_like(p)
            gs.before_step("main", params)
            opt.step()
            gs.after_step("main")
        with torch.autograd.profiler.profile() as prof:
            gs.before_step("main", params)
            gs.after_step("main")
            gs.latest("main")
        return len(prof.function_events)

    small, large = ops_of_a_step(10), ops_of_a_step(800)
    assert large == small and small < 40, (small, large)
