"""Aspect-ratio buckets by pixel budget.

Each file keeps its aspect ratio: it is scaled so that width*height fits the budget (never up), then each
side is floored to the model's spatial multiple (at least one multiple). The pixels are produced by "cover,
then center-crop": scale so the bucket is fully covered, crop the overflow evenly from both sides. Flooring
loses at most one multiple per side, so the crop is small.
"""

from __future__ import annotations

import math

from cadence.config.schema import DatasetConfig


def pixel_budgets(ds: DatasetConfig) -> list[int]:
    """Pixels per frame for each bucket family: max_pixels_per_frame if set, else r*r per resolution."""
    if ds.max_pixels_per_frame is not None:
        return [int(ds.max_pixels_per_frame)]
    seen: list[int] = []
    for r in ds.resolution:
        if r * r not in seen:
            seen.append(r * r)
    return seen


def bucket_size(width: int, height: int, budget: int, multiple: int) -> tuple[int, int]:
    """(bucket_width, bucket_height) for a source of `width`x`height` under a pixel budget."""
    if width <= 0 or height <= 0:
        raise ValueError(f"source size must be positive, got {width}x{height}")
    scale = min(1.0, math.sqrt(budget / (width * height)))
    w = max(multiple, int(width * scale + 1e-6) // multiple * multiple)
    h = max(multiple, int(height * scale + 1e-6) // multiple * multiple)
    return w, h


def cover_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """Resize target that covers (dst_w, dst_h) while keeping the source aspect ratio."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, math.ceil(src_w * scale - 1e-6)), max(dst_h, math.ceil(src_h * scale - 1e-6))


def center_crop_box(w: int, h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centered dst_w x dst_h window inside a w x h image."""
    left = (w - dst_w) // 2
    top = (h - dst_h) // 2
    return left, top, left + dst_w, top + dst_h
