"""Video decode benchmark: Cadence's decode + frame selection + bucket resize vs. a bare PyAV decode.

Both run in this process on the same synthetic clip (written here with PyAV). "bare" opens the file and
converts every frame to an RGB array at source size, the least work a trainer could do; "cadence" is
`decode_video_frames` on a MediaItem from `build_dataset_index` (seek, keep the planned frames, resize +
crop in swscale); "load_pixels" adds the float tensor in [-1, 1] the VAE takes. Figures are frames per
second (best of interleaved rounds, so other processes' load hits all three alike); goal: ratio >= 0.8.

    .venv/bin/python bench/decode_bench.py [--frames 33] [--size 256] [--resolution 192] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av

from cadence.config.schema import JobConfig
from cadence.data.dataset import build_dataset_index, load_pixels
from cadence.data.synthetic import video_codec, write_clip
from cadence.data.video import decode_video_frames


def bare_decode(path: Path) -> int:
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            frames += 1
    return frames


def timed(fn, repeats: int) -> float:
    """Frames per second of one round of `repeats` calls."""
    start, frames = time.perf_counter(), 0
    for _ in range(repeats):
        frames += fn()
    return frames / (time.perf_counter() - start)


def best_of(fns: dict[str, object], repeats: int, rounds: int) -> dict[str, float]:
    """Best round per function, rounds interleaved, so load from other processes hits both alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = max(best[name], timed(fn, repeats))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--width", type=int, default=None, help="source width (default: --size)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        width = args.width or args.size
        clip = write_clip(folder / "bench.mp4", width, args.size, args.frames, 16, seed=0)
        (folder / "bench.txt").write_text("bench")
        cfg = JobConfig(
            name="bench",
            model={"name_or_path": "none", "arch": "wan22_14b_i2v"},
            datasets=[{"folder_path": folder, "resolution": [args.resolution], "num_frames": args.frames}],
        )
        item = build_dataset_index(cfg, 16, 4, 16, seed=0).train_items[0]
        best = best_of(
            {
                "bare": lambda: bare_decode(clip),
                "ours": lambda: len(
                    decode_video_frames(clip, item.frames, item.width, item.height, item.source_fps)
                ),
                "tensor": lambda: load_pixels(item).shape[1],
            },
            args.repeats,
            args.rounds,
        )
        bare, ours, tensor = best["bare"], best["ours"], best["tensor"]
    sys.stdout.write(
        f"clip {width}x{args.size} x{args.frames} frames ({video_codec()}), "
        f"bucket {item.width}x{item.height}x{item.num_frames}\n"
        f"bare PyAV decode (rgb24, source size): {bare:8.1f} frames/s\n"
        f"cadence decode+select+bucket-resize:   {ours:8.1f} frames/s   ratio {ours / bare:.2f} (goal >= 0.8)\n"
        f"  + float tensor [-1, 1] (load_pixels): {tensor:8.1f} frames/s   ratio {tensor / bare:.2f}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
