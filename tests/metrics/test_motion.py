"""Motion statistics of real H.264 clips with known motion: ordering, size and frame-rate invariance, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cadence.metrics.motion import MotionStats, mean_stats, measure_frames, measure_video
from cadence.sampling.writers import write_mp4

FRAMES = 17


def render(width: int, height: int, speed: float, frames: int = FRAMES) -> np.ndarray:
    """uint8 [F, H, W, 3]: a checkered square (a quarter of the short side) moving `speed` px/frame to the
    right over a gradient."""
    yy, xx = np.mgrid[0:height, 0:width]
    side = min(width, height) // 4
    cell = max(1, side // 6)
    checker = ((np.add.outer(np.arange(side), np.arange(side)) // cell) % 2 * 120 + 100).astype(np.uint8)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = (40 + xx * 60 // width + yy * 40 // height).astype(np.uint8)
        x0 = int(round(width * 0.1 + t * speed))
        frame[height // 2 - side // 2 : height // 2 - side // 2 + side, x0 : x0 + side] = checker
        out[t] = np.repeat(frame[..., None], 3, axis=-1)
    return out


def clip(tmp_path: Path, name: str, frames: np.ndarray, fps: int) -> MotionStats:
    path = tmp_path / f"{name}.mp4"
    write_mp4(path, frames, fps)
    return measure_video(path)


def test_motion_orders_static_slow_fast_and_reads_the_declared_rate(tmp_path: Path) -> None:
    static = clip(tmp_path, "static", render(256, 192, 0), 16)
    slow = clip(tmp_path, "slow", render(256, 192, 2), 16)
    fast = clip(tmp_path, "fast", render(256, 192, 6), 16)
    assert static.fps == slow.fps == 16.0 and slow.intervals == FRAMES - 1
    for key in ("mean", "p95", "coarse"):
        assert getattr(static, key) < 0.002 < getattr(slow, key) < getattr(fast, key), key
    # the square moves 2 px/frame at 16 fps = 32 px/s over a 320 px diagonal: 0.1 diag/s; the 95th percentile
    # sits on the square (6% of the frame) and reads that speed within 15%
    assert slow.p95 == pytest.approx(2 * 16 / np.hypot(256, 192), rel=0.15)
    assert fast.coarse / slow.coarse == pytest.approx(3.0, rel=0.2)
    # a rigid shift is coarse motion; what remains is the square's edges
    assert slow.fine < 0.5 * slow.coarse


def test_motion_is_size_and_frame_rate_invariant(tmp_path: Path) -> None:
    base = clip(tmp_path, "base", render(192, 144, 3), 16)
    double = clip(tmp_path, "double", render(384, 288, 6), 16)  # same scene, twice the pixels per frame
    fast_rate = clip(tmp_path, "rate", render(192, 144, 1.5, frames=2 * FRAMES - 1), 32)  # same px/s
    for key in ("mean", "p95", "coarse"):
        assert getattr(double, key) == pytest.approx(getattr(base, key), rel=0.10), key
        assert getattr(fast_rate, key) == pytest.approx(getattr(base, key), rel=0.15), key


def jitter(width: int, height: int, frames: int = FRAMES, cell: int = 8) -> np.ndarray:
    """uint8 [F, H, W, 3]: a grid of small checkered patches, each jumping up to 2 px in its own random
    direction every frame: plenty of motion, none of it coherent over a large region."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (40 + xx * 60 // width + yy * 40 // height).astype(np.uint8)
    patch = ((np.add.outer(np.arange(cell), np.arange(cell)) // 3) % 2 * 120 + 100).astype(np.uint8)
    spots = [
        (x, y)
        for y in range(cell, height - 2 * cell, 2 * cell)
        for x in range(cell, width - 2 * cell, 2 * cell)
    ]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = base.copy()
        for (x, y), (dx, dy) in zip(spots, rng.integers(-2, 3, size=(len(spots), 2)), strict=True):
            frame[y + dy : y + dy + cell, x + dx : x + dx + cell] = patch
        out[t] = np.repeat(frame[..., None], 3, axis=-1)
    return out


def test_coarse_is_coherent_motion_and_fine_the_rest(tmp_path: Path) -> None:
    rigid = clip(tmp_path, "rigid", render(256, 192, 3), 16)
    scattered = clip(tmp_path, "scattered", jitter(256, 192), 16)
    # a rigid shift is all coherent: coarse equals the mean; its fine part is the square's edges, which a
    # block's average smears (about half of coarse); scattered motion is mostly fine
    assert rigid.coarse == pytest.approx(rigid.mean, rel=0.05)
    assert scattered.coarse < 0.8 * scattered.mean
    assert scattered.fine / scattered.coarse > 1.6 * rigid.fine / rigid.coarse


def test_measure_frames_checks_its_input() -> None:
    frames = list(render(64, 48, 1, frames=3))
    with pytest.raises(ValueError, match="at least 2 frames"):
        measure_frames(frames[:1], 16)
    with pytest.raises(ValueError, match="positive frame rate"):
        measure_frames(frames, 0)
    a = measure_frames(frames, 16)
    b = MotionStats.from_dict(a.to_dict())
    assert a == b
    both = mean_stats([a, b])
    assert both is not None and both.clips == 2 and both.coarse == pytest.approx(a.coarse)
    assert mean_stats([]) is None


def test_tensorboard_keeps_sample_motion_when_thinning(tmp_path: Path) -> None:
    """logging.log_every thins TensorBoard rows; sample motion comes on one line per sampled step (the one after
    the samples), which the thinning would almost always drop."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cadence.metrics.tensorboard import TensorBoardLog

    board = TensorBoardLog(tmp_path / "tb", every=10)
    board.open(None, None)
    for step in range(1, 31):
        row = {"step": step, "loss": 0.1}
        if step == 11:
            row.update(sample_motion_step=10, sample_motion_coarse=0.05)
        board.write(row)
    board.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [10, 20, 30]
    assert [e.step for e in events.Scalars("sample_motion_coarse")] == [11]
