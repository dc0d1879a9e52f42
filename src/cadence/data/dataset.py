"""Dataset index: discover media, read captions, assign buckets and frame plans; decode pixels.

Indexing reads only headers, so it is cheap enough to run at every start. Files are taken from the top
level of each dataset folder (subfolders, hidden files and `_cadence_cache` are ignored). One item per
(file, window, pixel budget): a video gives one window per frame_extraction position and length
(`windows.py`), an image one; two budgets giving the same bucket for a small file give one item.
`num_repeats` is kept on the item for the sampler; nothing is duplicated on disk. Every file that cannot be
used is skipped with a reason; warnings are aggregated to one line per kind (`index_notes.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cadence.config.schema import DatasetConfig, JobConfig
from cadence.data.augment import flipped_copies, jittered_plans
from cadence.data.buckets import bucket_size, fixed_bucket, over_budget, pixel_budgets
from cadence.data.caption_tokens import CaptionVariation
from cadence.data.captions import JSONL_NAME, CaptionStats, apply_trigger, caption_path, read_caption_text
from cadence.data.controls import control_images, control_stamp
from cadence.data.frames import TooShortError, fps_mismatch
from cadence.data.images import load_image, probe_image
from cadence.data.index_notes import IndexNotes, dataset_warnings
from cadence.data.media import DatasetError, MediaError, MediaItem, SkippedFile, dataset_entry, media_kind
from cadence.data.video import decode_video_frames, probe_video
from cadence.data.windows import Window, WindowSpec, plan_windows

log = logging.getLogger(__name__)


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
        counts = self.window_counts()
        if counts:
            text += " (" + ", ".join(_count_words(mode, n) for mode, n in counts.items()) + ")"
        if skipped:
            text += (
                f"; {len(skipped)} files skipped (their reasons are in the warnings at the start of the log)"
            )
        return text

    def window_counts(self) -> dict[str, int]:
        """Training items per frame_extraction mode ("image" for images), in first-seen order."""
        counts: dict[str, int] = {}
        for item in self.train_items:
            if item.extraction:
                counts[item.extraction] = counts.get(item.extraction, 0) + 1
        return counts


def _count_words(mode: str, n: int) -> str:
    if mode == "image":
        return f"{n} image{'s' if n != 1 else ''}"
    return f"{n} {mode} window{'s' if n != 1 else ''}"


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
            i,
            ds,
            cfg.trigger_word,
            spatial_multiple,
            temporal_multiple,
            native_fps,
            seed,
            index,
            cfg.train.reg_weight,
        )
        (index.eval_items if ds.is_eval else index.train_items).extend(items)
    for line in index.warnings:
        log.warning(line)
    return index


def _list_media(i: int, ds: DatasetConfig, notes: IndexNotes) -> list[Path]:
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
        if not dataset_entry(path):
            continue  # a dangling link is kept: it is reported as unreadable below
        kind = media_kind(path)
        if kind is not None and ds.media not in ("all", f"{kind}s"):
            notes.other_kind += 1
        elif kind is not None:
            media.append(path)
        elif path.suffix.lower().lstrip(".") == ds.caption_ext.lower().lstrip("."):
            captions.append(path.name)
        elif path.name == JSONL_NAME:
            continue  # the folder's captions.jsonl: read by read_caption
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
    reg_weight: float = 1.0,
) -> list[MediaItem]:
    notes = IndexNotes()
    files = _list_media(i, ds, notes)
    controls = control_images(i, Path(ds.control_path)) if ds.control_path is not None else None
    ctx = _Context(
        i, ds, trigger, multiple, temporal, native_fps, seed, CaptionStats(), notes, controls, reg_weight
    )
    items: list[MediaItem] = []
    skipped_before = len(index.skipped)
    for path in files:
        try:
            items.extend(_items_for(path, ctx))
        except MediaError as exc:
            index.skipped.append(SkippedFile(path, f"{exc.problem}; {exc.advice}"))
            log.warning("skipping %s", exc)
    index.warnings.extend(dataset_warnings(ds, notes, ctx.stats, len(files), native_fps))
    if not items:
        skipped = index.skipped[skipped_before:]
        detail = (
            f"; {len(skipped)} skipped, first: {skipped[0].path.name}: {skipped[0].reason}" if skipped else ""
        )
        raise DatasetError(
            f"datasets[{i}].folder_path: {ds.folder_path} has no usable media ({len(files)} media files{detail}). "
            "Add .jpg/.jpeg/.png/.webp images or .mp4/.mov/.webm/.mkv videos at the top level of the folder."
        )
    return flipped_copies(items, ds.flip_x, ds.flip_y)


@dataclass
class _Context:
    """What every file of one dataset is indexed with."""

    i: int
    ds: DatasetConfig
    trigger: str | None
    multiple: int
    temporal: int
    native_fps: float
    seed: int
    stats: CaptionStats
    notes: IndexNotes
    controls: dict[str, Path] | None  # stem -> control image, when control_path is set
    reg_weight: float = 1.0  # train.reg_weight: the loss weight of regularisation items


def _windows(path: Path, ctx: _Context) -> tuple[int, int, float, list[Window], str, int]:
    """(width, height, fps, windows, extraction mode, source frames) of one media file."""
    if media_kind(path) == "image":
        width, height = probe_image(path)
        return width, height, 0.0, [Window((0,), 0.0)], "image", 1
    info = probe_video(path)
    try:
        plan = plan_windows(
            info.num_frames,
            info.fps,
            WindowSpec.of(ctx.ds),
            seed=ctx.seed,
            key=path.name,
            temporal_multiple=ctx.temporal,
        )
    except TooShortError as exc:
        raise MediaError(
            path, f"is too short: {exc}", "use a longer clip, lower num_frames or fps, or remove it"
        ) from exc
    notes = ctx.notes
    if plan.shortened:
        notes.shortened.append(f"{path.name} ({', '.join(str(len(w.indices)) for w in plan.windows)})")
    if plan.missing:
        notes.missing_lengths.append(f"{path.name} ({', '.join(map(str, plan.missing))})")
    if plan.cut:
        rate = f"{ctx.ds.fps:g} fps" if ctx.ds.fps != "source" else "its own rate"
        notes.cut.append(f"{path.name} ({plan.positions} frames at {rate})")
    rates = [w.effective_fps for w in plan.windows if fps_mismatch(w.effective_fps, ctx.native_fps)]
    if rates:
        notes.fps.append(f"{path.name} ({rates[0]:.1f} fps)")
    return (
        info.width,
        info.height,
        info.fps,
        plan.windows,
        ctx.ds.frame_extraction or "shrink",
        info.num_frames,
    )


def _sizes(path: Path, width: int, height: int, ctx: _Context) -> list[tuple[int, int, int]]:
    """(bucket width, bucket height, budget) per pixel budget, duplicates merged."""
    ds = ctx.ds
    if ds.fixed_size is not None:
        w, h = fixed_bucket(ds.fixed_size, ctx.multiple)
        return [(w, h, w * h)]
    sizes: list[tuple[int, int, int]] = []
    for budget in pixel_budgets(ds):
        if over_budget(width, height, budget, ctx.multiple, ds.bucket_upscale):
            ctx.notes.over_budget.append(f"{path.name} ({width}x{height})")
        bw, bh = bucket_size(width, height, budget, ctx.multiple, ds.bucket_upscale)
        if all((bw, bh) != (w, h) for w, h, _ in sizes):
            sizes.append((bw, bh, budget))
    return sizes


def _control_for(path: Path, ctx: _Context) -> tuple[Path | None, str]:
    if ctx.controls is None:
        return None, ""
    control = ctx.controls.get(path.stem)
    if control is None:
        ctx.notes.no_control.append(path.name)
        return None, ""
    return control, control_stamp(path, control)


def _items_for(path: Path, ctx: _Context) -> list[MediaItem]:
    try:
        st = path.stat()
    except OSError as exc:
        raise MediaError(
            path,
            f"cannot be read ({exc.__class__.__name__}: {exc.strerror})",
            "restore the file (or the link target) or remove it",
        ) from exc
    kind = media_kind(path)
    width, height, fps, windows, extraction, total = _windows(path, ctx)
    control, stamp = _control_for(path, ctx)
    ds = ctx.ds
    text = read_caption_text(path, ds.caption_ext, ds.default_caption, ctx.trigger, ctx.stats)
    caption = apply_trigger(text, ctx.trigger, add=not ds.is_reg)  # ai-toolkit adds no trigger to reg sets

    def jitter(window: Window) -> tuple[tuple[int, ...], ...]:
        if kind != "video" or not ds.temporal_jitter:
            return ()
        key = f"{path.name}|{','.join(map(str, window.indices))}"
        return jittered_plans(
            window.indices, total, ds.temporal_jitter, ds.temporal_jitter_variants, ctx.seed, key
        )

    return [
        MediaItem(
            path=path,
            kind=kind,
            caption=caption,
            dataset_index=ctx.i,
            width=bw,
            height=bh,
            frames=window.indices,
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
            extraction=extraction,
            control=control,
            control_stamp=stamp,
            control_background=tuple(ds.control_transparent_color),
            jitter=jitter(window),
            caption_source=text,
            variation=CaptionVariation.of(ds, ctx.trigger),
            is_reg=ds.is_reg,
            loss_weight=ds.loss_multiplier * (ctx.reg_weight if ds.is_reg else 1.0),
            network_weight=ds.network_weight,
        )
        for bw, bh, budget in _sizes(path, width, height, ctx)
        for window in windows
    ]


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
