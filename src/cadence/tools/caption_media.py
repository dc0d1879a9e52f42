"""What `cadence caption` shows the model for each media file of a dataset folder.

The files are the ones the dataset loader trains on (top level of the folder, hidden files and
`_cadence_cache` left out; `cadence.data.media` decides what is an image or a video). A clip gives K frames
spread over its whole length by the training frame planner (`plan_frames`, shrink mode: first and last
frame included, each source frame index i shown at i / fps), decoded at their real times by the training
decoder (`decode_video_frames`); an image is loaded by the training image loader (EXIF rotation, transparency
onto white). Sizes keep the file's aspect ratio with the longer side at most `max_size` pixels (never
enlarged); the model's processor then rounds them to its patch grid. Unreadable files raise `MediaError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cadence.data.frames import TooShortError, plan_frames
from cadence.data.images import load_image, probe_image
from cadence.data.media import MediaError, dataset_media, media_kind
from cadence.data.video import decode_video_frames, probe_video
from cadence.models.caption_vlm import Visual


@dataclass(frozen=True)
class FrameOptions:
    frames: int = 8  # frames per clip
    max_size: int = 1280  # longer side of an image, pixels
    video_max_size: int = 640  # longer side of each clip frame, pixels


def list_media(folder: Path) -> list[Path]:
    """The media files the dataset loader would read from `folder`, sorted by name (its own rule)."""
    return dataset_media(folder)


def fitted_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most `max_size`, aspect kept, even, at least 2."""
    scale = min(1.0, max_size / max(width, height))

    def even(value: float) -> int:
        return max(2, int(round(value / 2)) * 2)

    return even(width * scale), even(height * scale)


def clip_frame_plan(total: int, fps: float, frames: int, key: str) -> tuple[int, ...]:
    """Source frame indices of `frames` frames spread over a clip of `total` frames (training's shrink plan;
    a clip shorter than `frames` gives all its frames, a one-frame clip its frame)."""
    try:
        plan = plan_frames(
            total, fps, frames, shrink=True, target_fps=fps, seed=0, key=key, temporal_multiple=1
        )
    except TooShortError:
        plan = plan_frames(total, fps, 1, shrink=True, target_fps=fps, seed=0, key=key, temporal_multiple=1)
    return plan.indices


def load_visual(path: Path, options: FrameOptions) -> Visual:
    """The image, or the clip's planned frames with their times, ready for the model. Raises MediaError."""
    if media_kind(path) == "image":
        width, height = fitted_size(*probe_image(path), options.max_size)
        return Visual((Image.fromarray(load_image(path, width, height)),))
    info = probe_video(path)
    indices = clip_frame_plan(info.num_frames, info.fps, options.frames, path.name)
    width, height = fitted_size(info.width, info.height, options.video_max_size)
    pixels = decode_video_frames(path, indices, width, height, info.fps)
    if len(pixels) != len(indices):
        raise MediaError(path, "decoded fewer frames than planned", "re-encode it or remove it")
    images = tuple(Image.fromarray(frame) for frame in pixels)
    return Visual(images, tuple(index / info.fps for index in indices))
