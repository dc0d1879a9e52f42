"""The motion the training clips hold: how much motion a LoRA trained on them should produce.

Measured once, when the caches are filled (`cadence cache` and the start of `cadence train`), on exactly the
frames the model trains on (the item's frame plan, cropped to its bucket), played at the model's native
frame rate, since that is the rate its samples play at: a clip squeezed into few frames counts as the fast
clip the model sees. Each clip's statistics live beside its latent cache entry (`<entry>.motion.json`,
reused while the fingerprint matches) and the run's reference, the mean over its training clips, is written
to `{run_dir}/motion_reference.json`, which `cadence analyze` and the live health checks read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cadence.atomic import atomic_write_text
from cadence.data.media import MediaError, MediaItem

log = logging.getLogger(__name__)

REFERENCE_FILE = "motion_reference.json"


@dataclass(frozen=True)
class MotionReference:
    """The training clips' mean motion and how fast they play compared with real time."""

    stats: Any  # cadence.metrics.motion.MotionStats (mean over clips)
    clips: int
    skipped: int
    fps: float  # the rate the clips were measured at (the model's native rate)
    speedup: float | None  # median of native fps / the rate the planned frames sample real time

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": self.stats.to_dict(),
            "clips": self.clips,
            "skipped": self.skipped,
            "fps": self.fps,
            "speedup": self.speedup,
        }


def _fingerprint(item: MediaItem, fps: float) -> dict[str, Any]:
    from cadence.metrics.motion import MOTION_FORMAT

    return {
        "format": MOTION_FORMAT,
        "source": item.path.name,
        "file_size": item.file_size,
        "mtime_ns": item.mtime_ns,
        "bucket": item.bucket_name,
        "frames": item.frames_hash,
        "fps": fps,
    }


def _speedup(item: MediaItem, fps: float) -> float | None:
    """How many times faster than real time the planned frames play at `fps`."""
    if len(item.frames) < 2 or item.source_fps <= 0:
        return None
    source_frames_per_frame = (item.frames[-1] - item.frames[0]) / (len(item.frames) - 1)
    return fps * source_frames_per_frame / item.source_fps if source_frames_per_frame > 0 else None


def _measure(item: MediaItem, fps: float) -> Any:
    from cadence.data.video import decode_video_frames
    from cadence.metrics.motion import measure_frames, working_size

    width, height = working_size(item.width, item.height)
    frames = decode_video_frames(item.path, item.frames, width, height, item.source_fps)
    return measure_frames(list(frames), fps)


def clip_motion(item: MediaItem, entry: Path, fps: float) -> Any:
    """The clip's MotionStats: from `entry` when its fingerprint matches, else measured and stored there."""
    from cadence.metrics.motion import MotionStats

    key = _fingerprint(item, fps)
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
        if stored.get("fingerprint") == key:
            return MotionStats.from_dict(stored["stats"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    stats = _measure(item, fps)
    atomic_write_text(entry, json.dumps({"fingerprint": key, "stats": stats.to_dict()}, indent=1) + "\n")
    return stats


def ensure_motion_reference(
    run_dir: Path, items: list[MediaItem], latents: Any, fps: float
) -> MotionReference | None:
    """Measure (or reuse) every training video's motion and write the run's reference; None without videos.

    `latents` is the run's LatentCache: each clip's statistics go beside its entry. A clip that fails to
    decode or measure is counted and left out (the latent cache reports undecodable files already)."""
    from cadence.metrics.motion import mean_stats

    seen: set[tuple[Path, str]] = set()
    measured, speedups, skipped = [], [], 0
    clips: set[Path] = set()
    for item in items:
        if (
            item.kind != "video"
            or item.is_eval
            or len(item.frames) < 2
            or (item.path, item.frames_hash) in seen
        ):
            continue
        seen.add((item.path, item.frames_hash))
        entry = latents.path(item).with_suffix(".motion.json")
        try:
            measured.append(clip_motion(item, entry, fps))
            clips.add(item.path)
        except Exception as exc:  # noqa: BLE001 - a reference is never worth failing the caches for
            skipped += 1
            if not isinstance(exc, MediaError):  # undecodable files were reported by the latent cache
                log.warning("motion reference: %s left out (%s: %s)", item.path, type(exc).__name__, exc)
            continue
        if (speed := _speedup(item, fps)) is not None:
            speedups.append(speed)
    stats = mean_stats(measured)
    path = Path(run_dir) / REFERENCE_FILE
    if stats is None:
        path.unlink(missing_ok=True)  # a reference of another dataset would mislead
        return None
    speedups.sort()
    reference = MotionReference(
        stats, len(measured), skipped, fps, speedups[len(speedups) // 2] if speedups else None
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(reference.to_dict(), indent=2) + "\n")
    log.info(
        "motion reference: the mean of %d training window(s) of %d clip(s) (each window as often as it trains), "
        "coarse motion %.4f diag/s at %g fps%s",
        reference.clips,
        len(clips),
        stats.coarse,
        fps,
        f" ({skipped} left out)" if skipped else "",
    )
    return reference


def read_motion_reference(run_dir: Path | str) -> MotionReference | None:
    """The reference `ensure_motion_reference` wrote into the run folder, or None (absent or unreadable)."""
    from cadence.metrics.motion import MotionStats

    path = Path(run_dir) / REFERENCE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return MotionReference(
            MotionStats.from_dict(data["stats"]),
            int(data["clips"]),
            int(data.get("skipped", 0)),
            float(data["fps"]),
            None if data.get("speedup") is None else float(data["speedup"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); motion is compared without the data's reference", path, exc)
        return None
