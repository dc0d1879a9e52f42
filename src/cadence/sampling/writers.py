"""Write one generated sample: H.264 mp4, animated WebP, first-frame PNG and a JSON sidecar (a video model's);
an image model's sample is its PNG and the sidecar (`output_kind` "image").

Names are `{step:09d}_{index:02d}.{ext}` so a plain sort orders them by step. The mp4 carries the model's
frame rate (16 fps for 14B Wan, 24 for TI2V-5B): at a wrong rate motion looks too fast or too slow, which
is easy to mistake for a training problem. Every file is written atomically; the sidecar is written last,
with the mp4's motion statistics, so the health checks find a sample's numbers once its sidecar exists.
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from cadence.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

EXTENSIONS = (".mp4", ".webp", ".png", ".json")
IMAGE_EXTENSIONS = (".png", ".json")


def extensions(kind: str = "video") -> tuple[str, ...]:
    """The files one sample is written as, for a model whose `output_kind` is `kind`."""
    return IMAGE_EXTENSIONS if kind == "image" else EXTENSIONS


def sample_stem(step: int, index: int) -> str:
    return f"{step:09d}_{index:02d}"


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] floats in [0, 1] (the pipeline's "np" output) -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: crop one row/column if odd (never happens at the 16/32 multiples)."""
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return frames[:, :h, :w]


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    frames = _even(frames)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_webp(path: Path, frames: np.ndarray, fps: int) -> None:
    images = [Image.fromarray(f) for f in frames]
    duration = max(1, round(1000 / fps))
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0, quality=90
        )


def write_png(path: Path, frame: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")


def sample_motion(mp4: Path, fps: int) -> dict[str, object] | None:
    """Motion statistics of the written mp4 (what a viewer and `cadence analyze` see), with the file's digest
    so a reader can tell whether they still describe the file; None (logged) when they cannot be measured:
    a missing number is better than a lost sample."""
    from cadence.metrics.motion import MOTION_FORMAT, file_digest, measure_video

    try:
        stats = measure_video(mp4, fps)
    except Exception as exc:  # noqa: BLE001 - OpenCV and decoder errors alike; the sample itself is fine
        log.warning("motion of %s not measured (%s: %s)", mp4, type(exc).__name__, exc)
        return None
    return {**stats.to_dict(), "format": MOTION_FORMAT, "sha256": file_digest(mp4)}


def write_sample(
    out_dir: Path,
    step: int,
    index: int,
    frames: np.ndarray,
    fps: int,
    sidecar: dict[str, object],
    kind: str = "video",
    motion_fps: int | None = None,
) -> list[Path]:
    """Write the files of one sample; returns their paths (mp4, webp, png, json; an image: png, json). The
    JSON sidecar gets the mp4's motion statistics (`motion`, see cadence.metrics.motion; None for images),
    measured at `motion_fps`: the model's native rate, the rate the training clips' reference is measured at,
    so a playback `fps` chosen for the samples never reads as more or less motion (`motion_fps` in the
    sidecar; `fps` stays the file's playback rate)."""
    stem = out_dir / sample_stem(step, index)
    if kind == "image":
        png, meta = (stem.with_suffix(ext) for ext in IMAGE_EXTENSIONS)
        write_png(png, frames[0])
        atomic_write_text(meta, json.dumps({**sidecar, "motion": None}, indent=2, sort_keys=True) + "\n")
        return [png, meta]
    paths = [stem.with_suffix(ext) for ext in EXTENSIONS]
    write_mp4(paths[0], frames, fps)
    write_webp(paths[1], frames, fps)
    write_png(paths[2], frames[0])
    rate = motion_fps or fps
    motion = sample_motion(paths[0], rate) if len(frames) > 1 else None
    sidecar = {**sidecar, "motion": motion, "motion_fps": rate}
    atomic_write_text(paths[3], json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return paths
