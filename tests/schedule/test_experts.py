"""Expert rotation: blocks of switch_every steps, trained experts only, exact resume mid-block."""

from __future__ import annotations

import pytest

from cadence.schedule.experts import ExpertRouter

BOTH = ["high_noise", "low_noise"]


def _labels(router: ExpertRouter, n: int) -> list[str]:
    out = []
    for _ in range(n):
        out.append(router.current())
        router.advance()
    return out


def test_blocks_alternate_in_model_order() -> None:
    assert _labels(ExpertRouter(BOTH, 3), 8) == ["high_noise"] * 3 + ["low_noise"] * 3 + ["high_noise"] * 2
    assert _labels(ExpertRouter(BOTH, 1), 4) == ["high_noise", "low_noise"] * 2


@pytest.mark.parametrize("trained", [["high_noise"], ["low_noise"], ["main"]])
def test_single_trained_expert_never_switches(trained: list[str]) -> None:
    assert _labels(ExpertRouter(trained, 2), 9) == trained * 9


@pytest.mark.parametrize("switch_every", [1, 3, 4])
def test_resume_at_every_offset_reproduces_sequence(switch_every: int) -> None:
    total = 5 * switch_every + 1
    straight = _labels(ExpertRouter(BOTH, switch_every), total)
    for stop in range(0, 2 * switch_every + 1):
        first = ExpertRouter(BOTH, switch_every)
        head = _labels(first, stop)
        resumed = ExpertRouter(BOTH, switch_every)
        resumed.load_state_dict(dict(first.state_dict()))
        assert head + _labels(resumed, total - stop) == straight, stop


def test_state_dict_keys_and_mismatch_errors() -> None:
    router = ExpertRouter(BOTH, 4)
    _labels(router, 6)
    assert router.state_dict() == {"index": 1, "steps_in_block": 2, "trained": BOTH}
    with pytest.raises(ValueError, match="train_high_noise"):
        ExpertRouter(["low_noise"], 4).load_state_dict(router.state_dict())
    with pytest.raises(ValueError, match="switch_boundary_every"):
        ExpertRouter(BOTH, 2).load_state_dict(router.state_dict())
    with pytest.raises(ValueError):
        ExpertRouter([], 1)
