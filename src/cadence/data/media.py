"""Shared data types of the dataset pipeline: media items, skipped files, and the user-facing errors.

A `MediaItem` is everything needed to decode one training sample and to fingerprint its cache entry,
so the caches and the trainer never look at the dataset folder again after indexing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cadence.data.caption_tokens import CaptionVariation

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".webm", ".mkv"})
CACHE_DIR_NAME = "_cadence_cache"

Bucket = tuple[int, int, int]  # (width, height, num_frames)


class DatasetError(Exception):
    """A dataset problem that stops indexing (missing folder, no usable media). The text is for users."""


class MediaError(Exception):
    """One file cannot be used (corrupt, too short, unreadable). Callers skip the file and count it."""

    def __init__(self, path: Path, problem: str, advice: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.advice = advice
        super().__init__(f"{self.path}: {problem}; {advice}")


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class MediaItem:
    """One training sample: a file, its caption and the exact pixels/frames the model will see."""

    path: Path
    kind: Literal["image", "video"]
    caption: str  # [trigger] replaced; default caption (or "") when the file has none
    dataset_index: int
    width: int  # bucket size in pixels
    height: int
    frames: tuple[
        int, ...
    ]  # source frame indices to decode, ascending ((0,) for images; jittered: any order)
    source_fps: float  # 0.0 for images
    file_size: int
    mtime_ns: int
    source_width: int = 0
    source_height: int = 0
    do_i2v: bool = False  # dataset asks for I2V conditioning (used only when the model is I2V)
    num_repeats: int = 1
    is_eval: bool = False
    caption_dropout_rate: float = 0.0
    budget: int = 0  # pixel budget (per frame) that produced the bucket
    extraction: str = ""  # the window's frame_extraction mode ("image" for images)
    control: Path | None = None  # I2V first-frame image from datasets[].control_path (None: the first frame)
    control_stamp: str = ""  # "size:mtime_ns" of the control image, for the cache fingerprint
    control_background: tuple[int, int, int] = (0, 0, 0)  # RGB under its transparent pixels
    flip: str = ""  # flip_x / flip_y copies: "x", "y" or "xy" (mirrored before encoding; its own cache entry)
    jitter: tuple[
        tuple[int, ...], ...
    ] = ()  # temporal_jitter: the window's jittered frame plans (see variants)
    caption_source: str = ""  # the caption as read, before the trigger word (token augmentation varies it)
    variation: CaptionVariation | None = None  # shuffle_tokens / token_dropout_rate, applied at batch time
    is_reg: bool = False  # a regularisation item (datasets[].is_reg)
    loss_weight: float = 1.0  # datasets[].loss_multiplier (x train.reg_weight for regularisation items)
    network_weight: float = 1.0  # the LoRA multiplier while training on it (datasets[].network_weight)

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def bucket(self) -> Bucket:
        return (self.width, self.height, len(self.frames))

    @property
    def bucket_name(self) -> str:
        return f"{self.width}x{self.height}x{len(self.frames)}"

    def variants(self) -> list[MediaItem]:
        """The items that have latent cache entries: this one, or one per jittered frame plan."""
        if not self.jitter:
            return [self]
        return [dataclasses.replace(self, frames=plan, jitter=()) for plan in self.jitter]

    @property
    def frames_hash(self) -> str:
        """Short digest of the frame plan: a different selection means a different cache entry."""
        text = ",".join(str(i) for i in self.frames)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def require_regular_file(path: Path) -> int:
    """The size of `path`, or MediaError when it is gone, unreadable, not a regular file or empty.

    Checked before any decoder opens the file: opening a FIFO (or a device) named like media blocks forever,
    and a file deleted or moved after indexing needs "restore it", not "re-encode it".
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise MediaError(
            path,
            "does not exist (deleted or moved after the dataset was indexed, or a broken link)",
            "restore it or remove it from the dataset folder",
        ) from exc
    except PermissionError as exc:
        raise MediaError(path, "cannot be read (permission denied)", "fix its permissions") from exc
    except OSError as exc:
        raise MediaError(
            path, f"cannot be read ({exc.__class__.__name__}: {exc.strerror})", "restore it or remove it"
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(
            path,
            "is not a regular file (a pipe, socket or device)",
            "replace it with the real media file or remove it",
        )
    if info.st_size == 0:
        raise MediaError(path, "is empty (0 bytes)", "replace it with the full file or remove it")
    return info.st_size


def dataset_entry(path: Path) -> bool:
    """Whether a dataset folder's entry is looked at at all: training reads the top level only, and skips
    hidden files and Cadence's own cache folder (one rule for the loader, `cadence caption` and the UI)."""
    return not (path.name.startswith(".") or path.name == CACHE_DIR_NAME or path.is_dir())


def dataset_media(folder: Path) -> list[Path]:
    """The media files of a dataset folder as training finds them, sorted by name (a dangling link is kept:
    the loader reports it as unreadable)."""
    return [p for p in sorted(folder.iterdir()) if dataset_entry(p) and media_kind(p) is not None]


def media_kind(path: Path) -> Literal["image", "video"] | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None
