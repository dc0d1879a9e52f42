"""One decode for the windows of a clip that lie close together.

`chunk`, `slide` and `uniform` cut many windows from one clip, often overlapping (`slide` with a small stride
repeats most frames in every window). Decoding each window on its own would seek and decode the shared
frames once per window. Instead, a clip's pending windows of one bucket size are grouped in start order,
and each group is decoded once (the union of its frames, in one forward pass), then sliced per window.

A group ends where the next window starts more than `MAX_GAP_FRAMES` source frames after the group's last
frame (a seek is cheaper than decoding through the gap) or where the group's frames at bucket size would
exceed `SHARED_DECODE_BYTES` (so a long clip never sits in memory whole). The frames are the same as a
per-window decode's: each target index takes the frame shown nearest to its time either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cadence.data.dataset import load_pixels, to_model_range
from cadence.data.media import MediaItem
from cadence.data.video import decode_video_frames

SHARED_DECODE_BYTES = 256 << 20  # uint8 RGB frames of one group at bucket size
MAX_GAP_FRAMES = 64  # source frames between windows that are decoded through rather than sought over


def decode_groups(items: Sequence[MediaItem]) -> list[list[MediaItem]]:
    """`items` split into groups that share one decode (each image, and each lone window, alone)."""
    by_clip: dict[tuple[object, ...], list[MediaItem]] = {}
    for n, item in enumerate(items):
        key = (item.path, item.width, item.height) if item.kind == "video" else (n,)
        by_clip.setdefault(key, []).append(item)
    groups: list[list[MediaItem]] = []
    for members in by_clip.values():
        members.sort(key=lambda it: (it.frames[0], it.frames[-1]))
        frame_bytes = members[0].width * members[0].height * 3
        run, union, last = [members[0]], set(members[0].frames), members[0].frames[-1]
        for item in members[1:]:
            merged = union | set(item.frames)
            if item.frames[0] - last > MAX_GAP_FRAMES or len(merged) * frame_bytes > SHARED_DECODE_BYTES:
                groups.append(run)
                run, union, last = [item], set(item.frames), item.frames[-1]
            else:
                run.append(item)
                union, last = merged, max(last, item.frames[-1])
        groups.append(run)
    return groups


def decode_group(group: Sequence[MediaItem]) -> Iterator[tuple[MediaItem, torch.Tensor]]:
    """(item, pixels [3, F, H, W] in [-1, 1]) for each item of a group from `decode_groups`; MediaError when
    the file fails to decode."""
    if len(group) == 1:
        yield group[0], load_pixels(group[0])
        return
    first = group[0]
    union = sorted({index for item in group for index in item.frames})
    frames = decode_video_frames(first.path, tuple(union), first.width, first.height, first.source_fps)
    row = {index: r for r, index in enumerate(union)}
    for item in group:
        yield item, to_model_range(frames[[row[index] for index in item.frames]])
