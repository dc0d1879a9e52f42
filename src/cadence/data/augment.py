"""Augmentations decided when the dataset is indexed, so that every variant is one latent cache entry.

`flip_x` / `flip_y` (ai-toolkit, `toolkit/data_loader.py`): the dataset gains a mirrored copy of every item
- with `flip_x` an x-flipped copy of each, then with `flip_y` a y-flipped copy of each of those (both: the
original, x, y and xy). ai-toolkit flips the decoded pixels (before VAE encoding) and caches each flipped copy
as its own latent entry (`flip_x` / `flip_y` in the entry's hash); latents are never flipped, since a flipped
latent is not the latent of the flipped picture. Cadence does the same: a copy has `flip` set, its entry's
name and fingerprint carry it, and `LatentCache.encode` mirrors the pixels and, for image-to-video, the
conditioning image with them (the window's first frame is flipped with the clip; a `control_path` image is
flipped too). ai-toolkit flips before its resize and crop, Cadence after the center crop: the same picture
up to the crop's rounding by one pixel. Captions are not changed ("left" stays "left"), as in ai-toolkit.

`temporal_jitter: N` (the relaxis fork, `load_and_process_video`): every frame index of a window moves by its
own uniform draw from -N..N source frames, clamped to the clip (frames may repeat or swap with a neighbour),
drawn afresh each time the fork loads the clip (it caches no video latents). Cadence caches latents, so it draws
`temporal_jitter_variants` jittered plans per window when indexing (seeded by train.seed, the file and the
window: the same on every run), caches each once, and every time a batch takes the item it trains on one of
them, chosen by the item's draw from the trainer's caption stream (`caption_tokens.variation_rng`), so resume
is exact. Each visit sees a plan from the fork's own distribution; the difference is that K plans recur instead
of a new one per visit, at K times the caching cost of the window. An I2V condition is the first frame of the
plan it trains with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from cadence.data.frames import seeded_rng
from cadence.data.media import MediaItem

if TYPE_CHECKING:
    from cadence.config.schema import DatasetConfig

VARIANT_SALT = 1  # variation_rng salt of the jittered-plan choice (caption variation uses 0)


def flipped_copies(items: list[MediaItem], flip_x: bool, flip_y: bool) -> list[MediaItem]:
    """`items` plus ai-toolkit's flipped copies, in its order."""
    out = list(items)
    if flip_x:
        out += [dataclasses.replace(item, flip="x") for item in items]
    if flip_y:
        out += [dataclasses.replace(item, flip=item.flip + "y") for item in list(out)]
    return out


def flip_pixels(pixels: torch.Tensor, flip: str) -> torch.Tensor:
    """Mirror [..., H, W] pixels: "x" left-right, "y" top-bottom, "xy" both."""
    dims = [d for axis, d in (("y", -2), ("x", -1)) if axis in flip]
    return pixels.flip(dims) if dims else pixels


def jittered_plans(
    frames: tuple[int, ...], total: int, jitter: int, variants: int, seed: int, key: str
) -> tuple[tuple[int, ...], ...]:
    """`variants` jittered copies of one window's source frame indices: each index moves by its own draw
    from -jitter..jitter and is clamped to 0..total-1 (the fork's rule); seeded by (seed, key)."""
    rng = seeded_rng(seed, f"{key}|temporal_jitter")
    last = total - 1
    return tuple(
        tuple(min(max(index + rng.randint(-jitter, jitter), 0), last) for index in frames)
        for _ in range(variants)
    )


def cache_units(items: Sequence[MediaItem]) -> list[MediaItem]:
    """Every item that has its own latent cache entry: each item, or each of its jittered plans."""
    return [unit for item in items for unit in item.variants()]


def variant_for(item: MediaItem, draw: float | None) -> MediaItem:
    """The cache entry a batch trains `item` with: its jittered plan chosen by the item's caption draw (the
    first plan without a draw: evaluation), or the item itself."""
    if not item.jitter:
        return item
    from cadence.data.caption_tokens import variation_rng

    choice = 0 if draw is None else variation_rng(draw, VARIANT_SALT).randrange(len(item.jitter))
    return item.variants()[choice]


def augment_key_problems(ds: DatasetConfig) -> list[str]:
    """The augmentation and regularisation keys of one dataset that could not act (each a sentence naming
    the key and what to do)."""
    problems: list[str] = []
    if ds.temporal_jitter and ds.media == "images":
        problems.append(
            f"temporal_jitter: {ds.temporal_jitter} moves video frames, and media: images uses none; remove it "
            "or set media: all"
        )
    if (
        ds.temporal_jitter_variants != type(ds).model_fields["temporal_jitter_variants"].default
        and not ds.temporal_jitter
    ):
        problems.append(
            "temporal_jitter_variants is the number of jittered frame plans of temporal_jitter; remove it or "
            "set temporal_jitter (e.g. 1)"
        )
    if ds.keep_tokens and not ds.token_dropout_rate:
        problems.append(
            f"keep_tokens: {ds.keep_tokens} protects the first tokens from token_dropout_rate only (ai-toolkit's "
            "rule; shuffle_tokens moves them too), and this dataset drops none; remove it or set "
            "token_dropout_rate"
        )
    if ds.is_eval:
        trained = [
            key
            for key, on in (
                ("is_reg", ds.is_reg),
                ("loss_multiplier", ds.loss_multiplier != 1),
                ("network_weight", ds.network_weight != 1),
                ("shuffle_tokens", ds.shuffle_tokens),
                ("token_dropout_rate", ds.token_dropout_rate > 0),
                ("temporal_jitter", ds.temporal_jitter > 0),
            )
            if on
        ]
        if trained:
            problems.append(
                f"{', '.join(trained)} act on training batches, and is_eval holds this dataset out of training "
                "(the eval loss uses the captions and frames as read, the adapter at strength 1, no weights); "
                "remove them or is_eval"
            )
    return problems
