"""Dataset index: discover media, read captions, assign buckets and frame plans; decode pixels.

Indexing reads only headers, so it is cheap enough to run at every start. Files are taken from the top
level of each dataset folder (subfolders, hidden files and `_cadence_cache` are ignored). One item per
(file, pixel budget); two budgets giving the same bucket for a small file give one item. `num_repeats` is
kept on the item for the sampler; nothing is duplicated on disk. Every file that cannot be used is skipped
with a reason; warnings are aggregated to one line per kind so a large dataset does not flood the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cadence.config.schema import DatasetConfig, JobConfig
from cadence.data.buckets import bucket_size, pixel_budgets
from cadence.data.captions import CaptionStats, caption_path, caption_warnings, read_caption
from cadence.data.frames import TooShortError, fps_mismatch, plan_frames
from cadence.data.images import load_image, probe_image
from cadence.data.media import CACHE_DIR_NAME, DatasetError, MediaError, MediaItem, SkippedFile, media_kind
from cadence.data.video import decode_video_frames, probe_video

log = logging.getLogger(__name__)
_LIST_AT_MOST = 5


@dataclass
class DatasetIndex:
    train_items: list[MediaItem] = field(default_factory=list)
    eval_items: list[MediaItem] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[MediaItem]:
        return self.train_items + self.eval_items

    def summary(self) -> str:
        """What a run trains on and how many files it dropped, in one line (the per-file warnings scroll
        away in a long log)."""
        used = {item.path for item in self.items}
        skipped = {entry.path for entry in self.skipped}
        text = f"dataset: {len(self.train_items)} training items from {len(used)} files"
        if skipped:
            text += (
                f"; {len(skipped)} files skipped (their reasons are in the warnings at the start of the log)"
            )
        return text


@dataclass
class _Notes:
    """Per-dataset observations that become one aggregated warning line each."""

    shortened: list[str] = field(default_factory=list)
    fps: list[str] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)
    orphan_captions: list[str] = field(default_factory=list)  # caption files no media file reads


def build_dataset_index(
    cfg: JobConfig,
    spatial_multiple: int,
    temporal_multiple: int = 4,
    native_fps: float = 16,
    seed: int | None = None,
) -> DatasetIndex:
    """Index every dataset of `cfg` (see module docstring). Raises DatasetError for a missing folder or a
    dataset with no usable media; skips (and records) single bad files."""
    seed = cfg.train.seed if seed is None else seed
    index = DatasetIndex()
    if not cfg.datasets:
        raise DatasetError("the config has no datasets; add one under `datasets:` with a folder_path")
    for i, ds in enumerate(cfg.datasets):
        items = _index_one(
            i, ds, cfg.trigger_word, spatial_multiple, temporal_multiple, native_fps, seed, index
        )
        (index.eval_items if ds.is_eval else index.train_items).extend(items)
    for line in index.warnings:
        log.warning(line)
    return index


def _list_media(i: int, ds: DatasetConfig, notes: _Notes) -> list[Path]:
    folder = Path(ds.folder_path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(
            f"datasets[{i}].folder_path: {folder} {what}; point it at a folder of images/videos "
            "(relative paths are resolved against the config file's folder)"
        )
    media: list[Path] = []
    captions: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name == CACHE_DIR_NAME or path.is_dir():
            continue  # a dangling link is kept: it is reported as unreadable below
        if media_kind(path) is not None:
            media.append(path)
        elif path.suffix.lower().lstrip(".") == ds.caption_ext.lower().lstrip("."):
            captions.append(path.name)
        else:
            ext = path.suffix.lower() or "(no extension)"
            notes.unsupported[ext] = notes.unsupported.get(ext, 0) + 1
    read = {caption_path(m, ds.caption_ext).name for m in media}
    notes.orphan_captions = [name for name in captions if name not in read]  # a typo'd or leftover caption
    return media


def _index_one(
    i: int,
    ds: DatasetConfig,
    trigger: str | None,
    multiple: int,
    temporal: int,
    native_fps: float,
    seed: int,
    index: DatasetIndex,
) -> list[MediaItem]:
    notes = _Notes()
    files = _list_media(i, ds, notes)
    stats = CaptionStats()
    items: list[MediaItem] = []
    skipped_before = len(index.skipped)
    for path in files:
        try:
            items.extend(_items_for(path, i, ds, trigger, multiple, temporal, native_fps, seed, stats, notes))
        except MediaError as exc:
            index.skipped.append(SkippedFile(path, f"{exc.problem}; {exc.advice}"))
            log.warning("skipping %s", exc)
    index.warnings.extend(_dataset_warnings(ds, notes, stats, len(files), native_fps))
    if not items:
        skipped = index.skipped[skipped_before:]
        detail = (
            f"; {len(skipped)} skipped, first: {skipped[0].path.name}: {skipped[0].reason}" if skipped else ""
        )
        raise DatasetError(
            f"datasets[{i}].folder_path: {ds.folder_path} has no usable media ({len(files)} media files{detail}). "
            "Add .jpg/.jpeg/.png/.webp images or .mp4/.mov/.webm/.mkv videos at the top level of the folder."
        )
    return items


def _items_for(
    path: Path,
    i: int,
    ds: DatasetConfig,
    trigger: str | None,
    multiple: int,
    temporal: int,
    native_fps: float,
    seed: int,
    stats: CaptionStats,
    notes: _Notes,
) -> list[MediaItem]:
    try:
        st = path.stat()
    except OSError as exc:
        raise MediaError(
            path,
            f"cannot be read ({exc.__class__.__name__}: {exc.strerror})",
            "restore the file (or the link target) or remove it",
        ) from exc
    kind = media_kind(path)
    if kind == "image":
        width, height = probe_image(path)
        frames, fps = (0,), 0.0
    else:
        info = probe_video(path)
        width, height, fps = info.width, info.height, info.fps
        try:
            plan = plan_frames(
                info.num_frames,
                info.fps,
                ds.num_frames,
                shrink=ds.shrink_video_to_frames,
                target_fps=ds.fps,
                seed=seed,
                key=path.name,
                temporal_multiple=temporal,
            )
        except TooShortError as exc:
            raise MediaError(
                path, f"is too short: {exc}", "use a longer clip, lower num_frames or fps, or remove it"
            ) from exc
        frames = plan.indices
        if plan.shortened:
            notes.shortened.append(f"{path.name} ({len(frames)})")
        if fps_mismatch(plan.effective_fps, native_fps):
            notes.fps.append(f"{path.name} ({plan.effective_fps:.1f} fps)")
    caption = read_caption(path, ds.caption_ext, ds.default_caption, trigger, stats)
    items: list[MediaItem] = []
    for budget in pixel_budgets(ds):
        bw, bh = bucket_size(width, height, budget, multiple)
        if any(it.width == bw and it.height == bh for it in items):
            continue
        items.append(
            MediaItem(
                path=path,
                kind=kind,
                caption=caption,
                dataset_index=i,
                width=bw,
                height=bh,
                frames=frames,
                source_fps=fps,
                file_size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                source_width=width,
                source_height=height,
                do_i2v=ds.do_i2v,
                num_repeats=ds.num_repeats,
                is_eval=ds.is_eval,
                caption_dropout_rate=ds.caption_dropout_rate,
                budget=budget,
            )
        )
    return items


def _some(names: list[str]) -> str:
    more = f" and {len(names) - _LIST_AT_MOST} more" if len(names) > _LIST_AT_MOST else ""
    return ", ".join(names[:_LIST_AT_MOST]) + more


def _dataset_warnings(
    ds: DatasetConfig, notes: _Notes, stats: CaptionStats, total: int, native_fps: float
) -> list[str]:
    folder = ds.folder_path
    lines = caption_warnings(stats, Path(folder), ds.caption_ext, ds.default_caption, total)
    if notes.unsupported:
        exts = ", ".join(f"{ext} x{n}" for ext, n in sorted(notes.unsupported.items()))
        lines.append(
            f"{sum(notes.unsupported.values())} files in {folder} have unsupported extensions ({exts}) "
            "and are ignored; supported: .jpg .jpeg .png .webp .mp4 .mov .webm .mkv"
        )
    if notes.orphan_captions:
        lines.append(
            f"{len(notes.orphan_captions)} .{ds.caption_ext.lstrip('.')} files in {folder} match no image or "
            f"video and are ignored: {_some(notes.orphan_captions)}. Give each its media file's name "
            f"(clip.mp4 -> clip.{ds.caption_ext.lstrip('.')}) or remove it."
        )
    if notes.shortened:
        lines.append(
            f"{len(notes.shortened)} videos in {folder} are shorter than num_frames={ds.num_frames} "
            f"and use fewer frames (4k+1): {_some(notes.shortened)}"
        )
    if notes.fps:
        mode = (
            "shrink_video_to_frames squeezes whole clips into num_frames"
            if ds.shrink_video_to_frames
            else f"fps={ds.fps:g} cannot be reached from the source rate"
        )
        lines.append(
            f"{len(notes.fps)} videos in {folder} sample time at a rate more than 2x away from the model's "
            f"{native_fps:g} fps, so motion will play too fast or too slow ({mode}): {_some(notes.fps)}. "
            "Set shrink_video_to_frames: false and fps: 16, or trim the clips."
        )
    if ds.max_pixels_per_frame and len(ds.resolution) > 1:
        lines.append(
            f"datasets folder {folder}: max_pixels_per_frame={ds.max_pixels_per_frame} sets the pixel budget, so "
            f"the resolution list {ds.resolution} gives one bucket size per file, not {len(ds.resolution)}; "
            "drop max_pixels_per_frame to train at every listed resolution"
        )
    return lines


def load_pixels(item: MediaItem) -> torch.Tensor:
    """Decode `item` to float32 [3, F, H, W] in [-1, 1] at its bucket size. Raises MediaError."""
    if item.kind == "image":
        array = load_image(item.path, item.width, item.height)[None]
    else:
        array = decode_video_frames(item.path, item.frames, item.width, item.height, item.source_fps)
    return to_model_range(array)


def to_model_range(array: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [3, F, H, W] in [-1, 1].

    Two numpy passes (scale into a new float buffer, subtract in place), then a permuted view of that
    channels-last buffer (not contiguous; every torch op and `.to(device)` accepts it). This is several
    times faster than a strided copy, and numpy's single thread does not fight the trainer for cores.
    """
    scaled = np.multiply(array, np.float32(1 / 127.5), dtype=np.float32)
    scaled -= np.float32(1.0)
    return torch.from_numpy(scaled).permute(3, 0, 1, 2)
