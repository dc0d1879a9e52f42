"""Aspect-ratio buckets by pixel budget.

Each file keeps its aspect ratio: it is scaled so that width*height fits the budget (never up, unless
`bucket_upscale`), then each side is floored to the model's spatial multiple (at least one multiple). The
pixels are produced by "cover, then center-crop": scale so the bucket is fully covered, crop the overflow
evenly from both sides. Flooring loses at most one multiple per side, so the crop is small.

A strip or panorama whose short side rounds below one multiple would keep its long side at full scaled
length while the short side is raised to the multiple: its bucket would hold several times the budget
(a 2000x10 banner under a 64x64 budget: 896x16, 3.5x). Such a bucket's long side is cut back until the
bucket fits the budget, and the file is reported: its center crop drops most of the long side.
`fixed_size` skips all of this: every file gets exactly that size.
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


def _aspect_bucket(width: int, height: int, budget: int, multiple: int, upscale: bool) -> tuple[int, int]:
    """The aspect-true bucket before the budget cap: sides scaled to the budget, floored to the multiple."""
    if width <= 0 or height <= 0:
        raise ValueError(f"source size must be positive, got {width}x{height}")
    scale = math.sqrt(budget / (width * height))
    if not upscale:
        scale = min(1.0, scale)
    w = max(multiple, int(width * scale + 1e-6) // multiple * multiple)
    h = max(multiple, int(height * scale + 1e-6) // multiple * multiple)
    return w, h


def bucket_size(
    width: int, height: int, budget: int, multiple: int, upscale: bool = False
) -> tuple[int, int]:
    """(bucket_width, bucket_height) for a source of `width`x`height` under a pixel budget; never more
    pixels than the budget (see the module docstring for strips)."""
    w, h = _aspect_bucket(width, height, budget, multiple, upscale)
    if w * h > budget:  # one side was raised to the multiple: cut the other back into the budget
        if w >= h:
            w = max(multiple, budget // h // multiple * multiple)
        else:
            h = max(multiple, budget // w // multiple * multiple)
    return w, h


def over_budget(width: int, height: int, budget: int, multiple: int, upscale: bool = False) -> bool:
    """True when the aspect-true bucket of this source would exceed the budget (a strip or panorama), so
    `bucket_size` cut its long side and the center crop drops much of the picture."""
    w, h = _aspect_bucket(width, height, budget, multiple, upscale)
    return w * h > budget


def fixed_bucket(size: list[int] | tuple[int, int], multiple: int) -> tuple[int, int]:
    """`fixed_size` [width, height] floored to the spatial multiple (at least one multiple)."""
    width, height = size
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


def cover_size(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int]:
    """Resize target that covers (dst_w, dst_h) while keeping the source aspect ratio."""
    scale = max(dst_w / src_w, dst_h / src_h)
    return max(dst_w, math.ceil(src_w * scale - 1e-6)), max(dst_h, math.ceil(src_h * scale - 1e-6))


def center_crop_box(w: int, h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centered dst_w x dst_h window inside a w x h image."""
    left = (w - dst_w) // 2
    top = (h - dst_h) // 2
    return left, top, left + dst_w, top + dst_h
