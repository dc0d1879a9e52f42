"""A small deterministic dataset of real encoded clips and images, for tests, the demo and benchmarks.

Clips show moving shapes on a gradient background (real motion, so temporal compression and frame
selection are exercised), encoded through PyAV with libx264/yuv420p when available, else mpeg4.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

_CAPTIONS = [
    "[trigger] a red ball bouncing across a blue gradient",
    "a green square sliding from left to right",
    "[trigger] two shapes orbiting each other, smooth motion",
    "a yellow disc falling and bouncing on the floor",
    "[trigger] a magenta bar sweeping upward",
    "a cyan ball moving in a circle",
]


def video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def render_frame(t: int, width: int, height: int, seed: int) -> np.ndarray:
    """uint8 [height, width, 3]: background gradient plus two shapes whose positions depend on t."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(60, 255, size=(3, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = (xx * 80 // max(1, width)).astype(np.uint8)
    frame[..., 1] = (yy * 80 // max(1, height)).astype(np.uint8)
    frame[..., 2] = 90 + (seed * 23) % 80
    speed = 2 + seed % 3
    span_x, span_y = max(1, width - 16), max(1, height - 16)
    cx = abs((t * speed * 3 + seed * 11) % (2 * span_x) - span_x) + 8
    cy = abs((t * speed * 2 + seed * 7) % (2 * span_y) - span_y) + 8
    radius = max(3, min(width, height) // 6)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius
    frame[disc] = colors[0]
    sx = (t * speed + seed * 5) % width
    frame[max(0, height // 2 - 4) : height // 2 + 4, sx : sx + radius] = colors[1]
    return frame


def write_clip(
    path: Path,
    width: int,
    height: int,
    num_frames: int,
    fps: int,
    seed: int,
    keyframe_interval: int | None = None,
) -> Path:
    """Encode a synthetic clip (width and height must be even for yuv420p)."""
    codec = video_codec()
    options = {"crf": "20", "preset": "veryfast", "threads": "1"} if codec == "libx264" else {}
    if keyframe_interval is not None:
        options["g"] = str(keyframe_interval)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(render_frame(t, width, height, seed), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_synthetic_dataset(
    folder: Path | str,
    n_videos: int = 6,
    n_images: int = 3,
    width: int = 96,
    height: int = 64,
    num_frames: int = 33,
    fps: int = 16,
    seed: int = 0,
) -> Path:
    """Write `n_videos` mp4 clips (every third one portrait) and `n_images` PNG/JPEG images, each with a
    same-stem .txt caption (some containing [trigger]). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        w, h = (height, width) if i % 3 == 2 else (width, height)
        write_clip(folder / f"clip_{i:02d}.mp4", w, h, num_frames, fps, seed + i)
        (folder / f"clip_{i:02d}.txt").write_text(_CAPTIONS[i % len(_CAPTIONS)] + "\n", encoding="utf-8")
    for i in range(n_images):
        ext = "png" if i % 2 == 0 else "jpg"
        w, h = (width, height) if i % 2 == 0 else (height, width)
        Image.fromarray(render_frame(i * 5, w, h, seed + 100 + i)).save(folder / f"image_{i:02d}.{ext}")
        text = f"{'[trigger] ' if i % 2 == 0 else ''}a still frame with a colored disc, number {i}"
        (folder / f"image_{i:02d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder
