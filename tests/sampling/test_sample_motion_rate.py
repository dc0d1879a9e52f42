"""Sample motion is measured at the model's native rate, as the training clips' reference is: a sample played
back at another `fps` must not read as more or less motion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cadence.sampling.writers import write_sample


def _moving_square(frames: int = 9, size: int = 64, speed: int = 3) -> np.ndarray:
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for i in range(frames):
        x = 8 + i * speed
        video[i, 20:36, x : x + 16] = 255
    return video


def test_playback_fps_does_not_change_the_measured_motion(tmp_path: Path) -> None:
    frames = _moving_square()
    native = write_sample(tmp_path / "a", 0, 0, frames, 16, {"fps": 16}, motion_fps=16)
    faster = write_sample(tmp_path / "b", 0, 0, frames, 24, {"fps": 24}, motion_fps=16)
    a = json.loads(native[-1].read_text())
    b = json.loads(faster[-1].read_text())
    assert b["fps"] == 24 and b["motion_fps"] == 16
    assert a["motion"]["mean"] > 0
    # the two mp4s are encoded at other rates, so their compression differs a little: within 1%
    assert abs(a["motion"]["mean"] - b["motion"]["mean"]) <= 0.01 * a["motion"]["mean"]
    unpinned = json.loads(write_sample(tmp_path / "c", 0, 0, frames, 24, {"fps": 24})[-1].read_text())
    assert unpinned["motion"]["mean"] > 1.4 * a["motion"]["mean"]  # what it was: 1.5x at 24 fps
