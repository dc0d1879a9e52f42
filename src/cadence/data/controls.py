"""Control images for image-to-video: `datasets[].control_path` is a folder holding one image per media file,
named by the media file's stem (clip.mp4 -> clip.png), as the seed trainer finds them. The image replaces
the window's first frame as the I2V condition (every window of the clip uses it). Found once per dataset,
probed (header only) at indexing so a broken image is reported before any encoding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cadence.data.images import load_image, probe_image
from cadence.data.media import IMAGE_EXTENSIONS, DatasetError, MediaError, MediaItem

# the order a stem's images are preferred in when several exist (the seed trainer's extension order)
_PREFERRED = (".jpg", ".jpeg", ".png", ".webp")


def control_images(i: int, folder: Path) -> dict[str, Path]:
    """stem -> control image in `folder` (top level only, hidden files ignored)."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(
            f"datasets[{i}].control_path: {folder} {what}; point it at a folder of images named like the media "
            "files (clip.mp4 -> clip.png), relative to the config file's folder"
        )
    found: dict[str, Path] = {}
    candidates = [
        p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    for path in sorted(candidates, key=lambda p: (p.stem, _PREFERRED.index(p.suffix.lower()))):
        found.setdefault(path.stem, path)
    return found


def control_stamp(media: Path, control: Path) -> str:
    """ "size:mtime_ns" of a control image (the cache fingerprint); MediaError names the media file it serves
    when the image cannot be used."""
    try:
        info = control.stat()
        probe_image(control)
    except MediaError as exc:
        raise MediaError(
            media, f"has a control image that cannot be used ({exc.problem})", exc.advice
        ) from exc
    except OSError as exc:
        raise MediaError(
            media, f"has a control image {control} that cannot be read ({exc.strerror})", "fix or remove it"
        ) from exc
    return f"{info.st_size}:{info.st_mtime_ns}"


def control_pixels(item: MediaItem) -> torch.Tensor:
    """The item's control image at its bucket size: float32 [3, H, W] in [-1, 1]."""
    from cadence.data.dataset import to_model_range

    assert item.control is not None
    try:
        array = load_image(item.control, item.width, item.height, item.control_background)
    except MediaError as exc:
        raise MediaError(
            item.path, f"has a control image that cannot be used ({exc.problem})", exc.advice
        ) from exc
    return to_model_range(array[None])[:, 0]
