import pytest

from cadence.data.frames import TooShortError, fps_mismatch, largest_valid_count, plan_frames


def test_shrink_spreads_over_whole_clip():
    plan = plan_frames(81, 16.0, 33, shrink=True, target_fps=16, seed=0, key="a.mp4")
    assert len(plan.indices) == 33 and plan.indices[0] == 0 and plan.indices[-1] == 80
    assert list(plan.indices) == sorted(set(plan.indices))
    assert plan.effective_fps == pytest.approx(16 * 32 / 80)
    assert not plan.shortened


def test_fps_mode_steps_source_frames_and_is_deterministic():
    a = plan_frames(300, 30.0, 17, shrink=False, target_fps=15, seed=3, key="clip.mp4")
    b = plan_frames(300, 30.0, 17, shrink=False, target_fps=15, seed=3, key="clip.mp4")
    assert a == b
    steps = {j - i for i, j in zip(a.indices, a.indices[1:], strict=False)}
    assert steps == {2} and a.effective_fps == pytest.approx(15.0)
    starts = {
        plan_frames(300, 30.0, 17, shrink=False, target_fps=15, seed=s, key="clip.mp4").indices[0]
        for s in range(20)
    }
    assert len(starts) > 5  # a random start, not always 0
    assert max(starts) <= 300 - 1 - 32


def test_fps_mode_fractional_step_and_no_duplicates_when_source_is_slower():
    plan = plan_frames(200, 24.0, 33, shrink=False, target_fps=16, seed=0, key="k")
    steps = [j - i for i, j in zip(plan.indices, plan.indices[1:], strict=False)]
    assert set(steps) <= {1, 2} and sum(steps) == 48
    slow = plan_frames(40, 8.0, 17, shrink=False, target_fps=16, seed=0, key="k")
    assert len(set(slow.indices)) == 17 and slow.effective_fps == pytest.approx(8.0)


def test_short_clip_uses_largest_4k_plus_1():
    plan = plan_frames(23, 16.0, 33, shrink=False, target_fps=16, seed=0, key="k")
    assert len(plan.indices) == 21 and plan.shortened and max(plan.indices) <= 22
    shrunk = plan_frames(10, 16.0, 33, shrink=True, target_fps=16, seed=0, key="k")
    assert len(shrunk.indices) == 9 and shrunk.shortened


def test_too_short_clip_raises():
    with pytest.raises(TooShortError, match="4 frames"):
        plan_frames(4, 16.0, 17, shrink=True, target_fps=16, seed=0, key="k")
    with pytest.raises(TooShortError):
        plan_frames(12, 30.0, 17, shrink=False, target_fps=5, seed=0, key="k")  # step 6: only 2 frames


def test_largest_valid_count_and_mismatch():
    assert [largest_valid_count(n) for n in (0, 1, 4, 5, 8, 9, 80, 81)] == [0, 1, 1, 5, 5, 9, 77, 81]
    assert fps_mismatch(6.5, 16) and fps_mismatch(40, 16)
    assert not fps_mismatch(16, 16) and not fps_mismatch(8.0, 16) and not fps_mismatch(0.0, 16)
