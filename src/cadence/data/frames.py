"""Which source frames a video contributes, and at what effective frame rate.

Two modes (seed semantics):
- `shrink_video_to_frames: true`: `num_frames` indices spread evenly over the whole clip, first and last
  frame included. Long clips become fast motion; the effective rate is reported so the caller can warn.
- otherwise: frames at the dataset `fps` (source frames stepped by source_fps / fps, never less than one
  source frame, so frames are never duplicated) from a random start. The start comes from a generator
  seeded by (seed, file key), so the plan is the same on every run and the latent cache stays valid.

Frame counts are k*temporal_multiple + 1 (4k+1 for Wan's VAE). A clip that cannot supply the count asked
for uses the largest valid count it can supply; fewer than temporal_multiple + 1 frames is an error.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass


class TooShortError(ValueError):
    """The clip cannot supply even the smallest valid frame count."""


@dataclass(frozen=True)
class FramePlan:
    indices: tuple[int, ...]
    effective_fps: float  # rate at which the chosen frames sample real time (0 for a single frame)
    shortened: bool  # fewer frames than asked for


def largest_valid_count(available: int, temporal_multiple: int = 4) -> int:
    """Largest k*temporal_multiple + 1 that is <= available (0 when available < 1)."""
    if available < 1:
        return 0
    return (available - 1) // temporal_multiple * temporal_multiple + 1


def seeded_rng(seed: int, key: str) -> random.Random:
    """A generator that depends only on (seed, key): stable across runs and processes."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def plan_frames(
    total: int,
    source_fps: float,
    num_frames: int,
    *,
    shrink: bool,
    target_fps: float,
    seed: int,
    key: str,
    temporal_multiple: int = 4,
) -> FramePlan:
    """Choose `num_frames` source frame indices from a clip of `total` frames (see module docstring)."""
    if total < 1:
        raise TooShortError("the video has no frames")
    if num_frames == 1:
        start = 0 if shrink else seeded_rng(seed, key).randint(0, total - 1)
        return FramePlan((start,), 0.0, False)
    minimum = temporal_multiple + 1
    if shrink:
        count = num_frames if total >= num_frames else largest_valid_count(total, temporal_multiple)
        if count < minimum:
            raise TooShortError(f"the video has {total} frames; at least {minimum} are needed")
        step = (total - 1) / (count - 1)
        indices = tuple(int(i * step + 0.5) for i in range(count))
        return FramePlan(indices, source_fps / step if step > 0 else 0.0, count < num_frames)
    step = max(1.0, source_fps / target_fps)
    count = num_frames
    if (count - 1) * step > total - 1:
        count = largest_valid_count(math.floor((total - 1) / step + 1e-9) + 1, temporal_multiple)
        if count < minimum:
            raise TooShortError(
                f"the video has {total} frames ({total / source_fps:.2f} s at {source_fps:g} fps); "
                f"{minimum} frames at {target_fps:g} fps need {(minimum - 1) * step + 1:.0f}"
            )
    max_start = math.floor(total - 1 - (count - 1) * step + 1e-9)
    start = seeded_rng(seed, key).randint(0, max(0, max_start))
    indices = tuple(int(start + i * step + 0.5) for i in range(count))
    return FramePlan(indices, source_fps / step, count < num_frames)


def fps_mismatch(effective_fps: float, native_fps: float, factor: float = 2.0) -> bool:
    """True when the effective rate differs from the model's native rate by more than `factor`."""
    if effective_fps <= 0 or native_fps <= 0:
        return False
    ratio = effective_fps / native_fps
    return ratio > factor or ratio < 1 / factor
