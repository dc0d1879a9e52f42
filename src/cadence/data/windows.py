"""Windows: the stretches of a clip that become training items, one per (length, position).

Modes (`datasets[].frame_extraction`; musubi-tuner's names for the ones it has):
- `shrink` (seed default, `shrink_video_to_frames: true`): each length spread evenly over the whole clip.
- `random` (`shrink_video_to_frames: false`): one window per length at a seeded random start.
- `head`: one window per length at the clip's start.
- `chunk`: back-to-back windows of each length (no overlap, a partial tail dropped).
- `slide`: windows of each length starting every `frame_stride` frames.
- `uniform`: `frame_sample` windows of each length, starts spread evenly from the clip's start to its end.
- `full`: one window of the whole clip, at most `max_frames` (rounded down to 4k+1); a longer clip keeps
  its first `max_frames`, as in musubi-tuner.

Every mode but `shrink` plans at real time on the target rate: frame k of a window is the source frame shown
nearest to (start + k) / fps, where positions count frames at the target rate (`fps`, or each clip's own
rate with `fps: source`). Positions, strides and lengths are therefore frames *at the target rate*; a 30 fps
clip planned at 16 fps steps 1.875 source frames per frame. The source is never stepped by less than one
frame (a clip slower than the target keeps its own rate; the motion-speed check reports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cadence.data.frames import TooShortError, largest_valid_count, plan_frames

if TYPE_CHECKING:
    from cadence.config.schema import DatasetConfig

TIMED_MODES = frozenset({"head", "chunk", "slide", "uniform", "full"})


@dataclass(frozen=True)
class WindowSpec:
    """The dataset settings that decide a clip's windows."""

    mode: str
    lengths: tuple[int, ...]
    fps: float | None  # target rate; None = each clip's own rate (`fps: source`)
    stride: int = 1
    samples: int = 1
    max_frames: int = 129

    @classmethod
    def of(cls, ds: DatasetConfig) -> WindowSpec:
        fps = None if ds.fps == "source" else float(ds.fps)
        return cls(
            ds.frame_extraction or "shrink",
            ds.frame_counts,
            fps,
            ds.frame_stride,
            ds.frame_sample,
            ds.max_frames,
        )


@dataclass(frozen=True)
class Window:
    indices: tuple[int, ...]  # source frame indices, ascending
    effective_fps: float  # rate at which the frames sample real time (0 for one frame)


@dataclass
class WindowPlan:
    windows: list[Window]
    shortened: bool = False  # shrink/random: a length was cut to what the clip holds
    cut: bool = False  # full: the clip is longer than max_frames
    missing: tuple[int, ...] = ()  # timed modes: lengths the clip is too short for
    positions: int = 0  # timed modes: frames the clip holds at the target rate


def _step(source_fps: float, target_fps: float | None) -> float:
    return 1.0 if target_fps is None else max(1.0, source_fps / target_fps)


def target_positions(total: int, step: float) -> int:
    """How many target-rate frames a clip of `total` source frames holds."""
    return math.floor((total - 1) / step + 1e-9) + 1


def _window(start: int, length: int, step: float, source_fps: float) -> Window:
    indices = tuple(int((start + k) * step + 0.5) for k in range(length))
    return Window(indices, source_fps / step if length > 1 else 0.0)


def _starts(mode: str, positions: int, length: int, spec: WindowSpec) -> list[int]:
    """Window starts (target-rate positions) of one length; [] when the clip is too short for it."""
    last = positions - length  # the latest start that still fits
    if last < 0:
        return []
    if mode == "head":
        return [0]
    if mode == "chunk":
        return list(range(0, last + 1, length))
    if mode == "slide":
        return list(range(0, last + 1, spec.stride))
    # uniform: numpy's linspace truncated to ints, as musubi-tuner does (duplicates of a short clip merge)
    return sorted({int(s) for s in np.linspace(0, last, spec.samples, dtype=int)})


def plan_windows(
    total: int, source_fps: float, spec: WindowSpec, *, seed: int, key: str, temporal_multiple: int = 4
) -> WindowPlan:
    """Every window a clip of `total` frames at `source_fps` gives under `spec`. Raises TooShortError when
    it gives none."""
    if total < 1:
        raise TooShortError("the video has no frames")
    if spec.mode in ("shrink", "random"):
        return _legacy(total, source_fps, spec, seed, key, temporal_multiple)
    step = _step(source_fps, spec.fps)
    positions = target_positions(total, step)
    rate = f"{spec.fps:g} fps" if spec.fps is not None else "its own rate"
    if spec.mode == "full":
        length = largest_valid_count(min(positions, spec.max_frames), temporal_multiple)
        if length < temporal_multiple + 1:
            raise TooShortError(f"the video holds {positions} frames at {rate}; full needs at least 5")
        window = _window(0, length, step, source_fps)
        return WindowPlan([window], cut=positions > spec.max_frames, positions=positions)
    windows: list[Window] = []
    missing: list[int] = []
    for length in spec.lengths:
        starts = _starts(spec.mode, positions, length, spec)
        if not starts:
            missing.append(length)
        windows.extend(_window(start, length, step, source_fps) for start in starts)
    if not windows:
        raise TooShortError(
            f"the video holds {positions} frames at {rate} ({total} source frames at {source_fps:g} fps); "
            f"the shortest window asked for is {min(spec.lengths)}"
        )
    return WindowPlan(windows, missing=tuple(missing), positions=positions)


def _legacy(
    total: int, source_fps: float, spec: WindowSpec, seed: int, key: str, temporal_multiple: int
) -> WindowPlan:
    """shrink / random: one window per length through `plan_frames` (the frames, and so the cache entries,
    of configs written before windows existed stay exactly the same)."""
    windows: list[Window] = []
    shortened = False
    target = spec.fps if spec.fps is not None else source_fps
    for length in spec.lengths:
        plan = plan_frames(
            total,
            source_fps,
            length,
            shrink=spec.mode == "shrink",
            target_fps=target,
            seed=seed,
            key=key,
            temporal_multiple=temporal_multiple,
        )
        shortened |= plan.shortened
        window = Window(plan.indices, plan.effective_fps)
        if window not in windows:  # two lengths cut to the same count on a short clip give one window
            windows.append(window)
    return WindowPlan(windows, shortened=shortened)


# ------------------------------------------------------------------------------- config rules
_MODE_KEYS = {"frame_stride": ("slide", 1), "frame_sample": ("uniform", 1), "max_frames": ("full", 129)}


def dataset_key_problems(ds: DatasetConfig) -> list[str]:
    """Settings of one dataset that could not act (each a sentence naming the key and what to do)."""
    mode = ds.frame_extraction
    problems: list[str] = []
    if ds.shrink_video_to_frames != (mode == "shrink"):
        problems.append(
            f"shrink_video_to_frames: {str(ds.shrink_video_to_frames).lower()} contradicts frame_extraction: "
            f"{mode} (shrink_video_to_frames true is frame_extraction shrink); keep one of the two"
        )
    for key, (owner, default) in _MODE_KEYS.items():
        value = getattr(ds, key)
        if value != default and mode != owner:
            problems.append(
                f"{key}: {value} is used by frame_extraction: {owner} only (this dataset uses {mode}); "
                f"remove it or set frame_extraction: {owner}"
            )
    if mode == "full" and ds.frame_counts != (1,):
        problems.append(
            f"num_frames {ds.num_frames} does nothing with frame_extraction: full (the whole clip, up to "
            "max_frames, is one window); remove num_frames or pick head/chunk/slide/uniform"
        )
    if ds.fixed_size is not None and (ds.max_pixels_per_frame is not None or ds.bucket_upscale):
        problems.append(
            "fixed_size sets every file's size, so max_pixels_per_frame and bucket_upscale cannot act; "
            "keep fixed_size or the bucket keys"
        )
    if ds.media == "images" and (ds.frame_counts != (1,) or mode not in ("shrink", None)):
        problems.append(
            "media: images uses no video frames, so num_frames/frame_extraction cannot act; remove them or "
            "set media: all"
        )
    if ds.control_path is None and ds.control_transparent_color != [0, 0, 0]:
        problems.append(
            "control_transparent_color is used with control_path only; remove it or set control_path"
        )
    if ds.control_path is not None and ds.do_i2v is False:
        problems.append(
            f"datasets[].control_path {ds.control_path} gives image-to-video first frames, but this dataset does "
            "not train I2V (do_i2v false, or a text-to-video model.arch); remove control_path, or set do_i2v: "
            "true with an image-to-video arch"
        )
    return problems
