"""What indexing one dataset noticed, turned into one warning line per kind (a large dataset must not flood
the log with a line per file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cadence.config.schema import DatasetConfig
from cadence.data.captions import CaptionStats, caption_warnings

_LIST_AT_MOST = 5


@dataclass
class IndexNotes:
    """Per-dataset observations; each list holds "name (detail)" strings."""

    shortened: list[str] = field(default_factory=list)  # shrink/random: fewer frames than asked
    fps: list[str] = field(default_factory=list)  # effective rate far from the model's
    unsupported: dict[str, int] = field(default_factory=dict)
    orphan_captions: list[str] = field(default_factory=list)  # caption files no media file reads
    missing_lengths: list[str] = field(default_factory=list)  # timed modes: lengths a clip cannot hold
    cut: list[str] = field(default_factory=list)  # full: clips longer than max_frames
    over_budget: list[str] = field(default_factory=list)  # strips cropped into the pixel budget
    no_control: list[str] = field(default_factory=list)  # control_path set, no image for the file
    other_kind: int = 0  # media files left out by `media: images|videos`


def some(names: list[str]) -> str:
    more = f" and {len(names) - _LIST_AT_MOST} more" if len(names) > _LIST_AT_MOST else ""
    return ", ".join(names[:_LIST_AT_MOST]) + more


def dataset_warnings(
    ds: DatasetConfig, notes: IndexNotes, stats: CaptionStats, total: int, native_fps: float
) -> list[str]:
    folder = ds.folder_path
    lines = caption_warnings(stats, Path(folder), ds.caption_ext, ds.default_caption, total)
    if notes.unsupported:
        exts = ", ".join(f"{ext} x{n}" for ext, n in sorted(notes.unsupported.items()))
        lines.append(
            f"{sum(notes.unsupported.values())} files in {folder} have unsupported extensions ({exts}) "
            "and are ignored; supported: .jpg .jpeg .png .webp .mp4 .mov .webm .mkv"
        )
    if notes.other_kind:
        lines.append(
            f"{notes.other_kind} media files in {folder} are not {ds.media} and are left out (media: {ds.media})"
        )
    if notes.orphan_captions:
        ext = ds.caption_ext.lstrip(".")
        lines.append(
            f"{len(notes.orphan_captions)} .{ext} files in {folder} match no image or video and are ignored: "
            f"{some(notes.orphan_captions)}. Give each its media file's name (clip.mp4 -> clip.{ext}) or "
            "remove it."
        )
    lines += _window_warnings(ds, notes, native_fps)
    if notes.over_budget:
        lines.append(
            f"{len(notes.over_budget)} files in {folder} are too narrow for the pixel budget at their aspect "
            f"ratio (a side below one bucket multiple): their buckets are cut to the budget and center-cropped, "
            f"losing much of the long side: {some(notes.over_budget)}. Crop or pad them nearer to the frame's "
            "shape, or raise the budget"
        )
    if notes.no_control:
        lines.append(
            f"{len(notes.no_control)} files in {folder} have no image in control_path {ds.control_path}; their "
            f"own first frame conditions them: {some(notes.no_control)}. Add a same-stem image (clip.mp4 -> "
            "clip.png) to condition them on it"
        )
    if ds.max_pixels_per_frame and len(ds.resolution) > 1:
        lines.append(
            f"datasets folder {folder}: max_pixels_per_frame={ds.max_pixels_per_frame} sets the pixel budget, so "
            f"the resolution list {ds.resolution} gives one bucket size per file, not {len(ds.resolution)}; "
            "drop max_pixels_per_frame to train at every listed resolution"
        )
    return lines


def _window_warnings(ds: DatasetConfig, notes: IndexNotes, native_fps: float) -> list[str]:
    folder = ds.folder_path
    lines: list[str] = []
    if notes.shortened:
        lines.append(
            f"{len(notes.shortened)} videos in {folder} are shorter than num_frames={ds.num_frames} "
            f"and use fewer frames (4k+1): {some(notes.shortened)}"
        )
    if notes.missing_lengths:
        lines.append(
            f"{len(notes.missing_lengths)} videos in {folder} are too short for some num_frames lengths at "
            f"frame_extraction {ds.frame_extraction} and give no window of those lengths: "
            f"{some(notes.missing_lengths)}"
        )
    if notes.cut:
        lines.append(
            f"{len(notes.cut)} videos in {folder} are longer than max_frames={ds.max_frames} and train on their "
            f"first {ds.max_frames} frames only (frame_extraction full): {some(notes.cut)}. Use chunk or "
            "slide to train on the rest too"
        )
    if notes.fps:
        if ds.frame_extraction == "shrink":
            mode = "shrink_video_to_frames squeezes whole clips into num_frames"
            advice = "Set frame_extraction to random, head, chunk, slide, uniform or full with fps: 16"
        elif ds.fps == "source":
            mode = "fps: source keeps each clip's own rate"
            advice = "Set fps: 16"
        else:
            mode = f"fps={ds.fps:g} cannot be reached from the source rate"
            advice = "Set fps: 16"
        lines.append(
            f"{len(notes.fps)} videos in {folder} sample time at a rate more than 2x away from the model's "
            f"{native_fps:g} fps, so motion will play too fast or too slow ({mode}): {some(notes.fps)}. "
            f"{advice}, or trim the clips."
        )
    return lines
