"""Video decode: Cadence's decode + frame selection + bucket resize against bare PyAV doing the same work.

What it compares, on the same synthetic clip (written here with PyAV) and the same output (the planned
frames, cover-resized and center-cropped to the bucket, uint8 RGB; checked equal before timing):
- ours: `decode_video_frames` on the MediaItem `build_dataset_index` plans (seek, nearest-timestamp frame
  selection, swscale resize + crop);
- reference: PyAV as well as it can be used for it: one decode pass, the frames counted, two swscale
  contexts reused for the whole clip (`VideoReformatter`: scale in the decoder's YUV with AREA, then
  convert to rgb24: libswscale's fast paths), the same crop;
- reference, one pass: a single reused context scaling straight into rgb24 (simpler, slower; shown too);
- tensor: `load_pixels` (ours + the float tensor in [-1, 1]) against the reference + the same conversion.
Runs alternate in pairs (bench/pairing.py) and the median of the per-pair speed ratios is printed with its
spread (> 1: ours is faster). Goal: ours / reference >= 0.8.

    .venv/bin/python bench/decode_bench.py [--frames 33] [--size 256] [--resolution 192] [--pairs 15]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import ratio_line, run_pairs  # noqa: E402

from cadence.config.schema import JobConfig  # noqa: E402
from cadence.data.buckets import center_crop_box, cover_size  # noqa: E402
from cadence.data.dataset import build_dataset_index, load_pixels, to_model_range  # noqa: E402
from cadence.data.synthetic import video_codec, write_clip  # noqa: E402
from cadence.data.video import decode_video_frames  # noqa: E402


def bare_decode(path: Path, frames: tuple[int, ...], width: int, height: int, two_stage: bool) -> np.ndarray:
    """The planned frames (source indices of a constant-rate clip) at the bucket size, with PyAV alone."""
    wanted = {index: slot for slot, index in enumerate(frames)}
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    scaler, to_rgb = VideoReformatter(), VideoReformatter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                cw, ch = cover_size(frame.width, frame.height, width, height)
                if two_stage:
                    scaled = scaler.reformat(frame, width=cw, height=ch, interpolation="AREA")
                    rgb = to_rgb.reformat(scaled, format="rgb24").to_ndarray()
                else:
                    rgb = scaler.reformat(frame, width=cw, height=ch, format="rgb24", interpolation="AREA")
                    rgb = rgb.to_ndarray()
                left, top, right, bottom = center_crop_box(cw, ch, width, height)
                out[wanted[index]] = rgb[top:bottom, left:right]
            if index >= frames[-1]:
                break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--width", type=int, default=None, help="source width (default: --size)")
    parser.add_argument("--size", type=int, default=256, help="source height")
    parser.add_argument("--resolution", type=int, default=192, help="bucket resolution")
    parser.add_argument("--pairs", type=int, default=15)
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

        def ours() -> np.ndarray:
            return decode_video_frames(clip, item.frames, item.width, item.height, item.source_fps)

        def reference() -> np.ndarray:
            return bare_decode(clip, item.frames, item.width, item.height, two_stage=True)

        def one_pass() -> np.ndarray:
            return bare_decode(clip, item.frames, item.width, item.height, two_stage=False)

        if not np.array_equal(ours(), reference()):
            raise SystemExit(
                "the reference does not produce Cadence's frames: the comparison would be unfair"
            )
        decode = run_pairs(ours, reference, args.pairs)
        single = run_pairs(ours, one_pass, args.pairs)
        tensor = run_pairs(lambda: load_pixels(item), lambda: to_model_range(reference()), args.pairs)
    out = sys.stdout.write
    out(
        f"clip {width}x{args.size} x{args.frames} frames ({video_codec()}), bucket {item.width}x{item.height} "
        f"x{len(item.frames)} frames; times per clip\n"
    )
    out(
        ratio_line("decode+select+resize vs PyAV, two reused contexts", decode, speed=True, goal=">= 0.8")
        + "\n"
    )
    out(ratio_line("decode+select+resize vs PyAV, one reused rgb24 context", single, speed=True) + "\n")
    out(
        ratio_line(
            "load_pixels (float tensor) vs PyAV two contexts + the same conversion", tensor, speed=True
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
