"""Captioning benchmark: captions/s of `cadence caption`'s per-file path vs. a bare `generate` on the same inputs.

Runs on the CPU with the tiny random-weight Qwen2.5-VL (`cadence.models.tiny_vlm`) over real files written
here (mp4 clips and PNG images). "cadence" is everything the command does per file: decode the planned frames
(or load the image), build the prompt, run the processor, `generate`, and write the caption atomically.
"bare" is `model.generate(**inputs)` alone, on inputs the processor built once beforehand, with the same
generation settings (greedy, same max_new_tokens), so both produce the same tokens. Pairs are interleaved
per file and round, the order inside a pair alternating (bench/pairing.py), and the figure is the median of
the per-pair time ratios with its spread, so load from other processes hits both alike. The per-caption
overhead ratio is cadence / bare (1.0 = no overhead; the tiny model's generate is milliseconds, so the
overhead share is far larger here than with a 7B model).

    .venv/bin/python bench/caption_bench.py [--files 6] [--rounds 5] [--tokens 16] [--frames 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Pairs, ratio_line, seconds  # noqa: E402

from cadence.data.synthetic import render_frame, write_clip  # noqa: E402
from cadence.models.caption_vlm import load_caption_model  # noqa: E402
from cadence.models.tiny_vlm import write_tiny_vlm  # noqa: E402
from cadence.tools.caption_media import FrameOptions, list_media, load_visual  # noqa: E402
from cadence.tools.caption_output import TextSink  # noqa: E402
from cadence.tools.caption_prompts import render_prompt  # noqa: E402


def write_media(folder: Path, files: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        if i % 2 == 0:
            write_clip(folder / f"clip_{i}.mp4", 160, 96, 33, 16, seed=i)
        else:
            Image.fromarray(render_frame(i, 160, 96, seed=i)).save(folder / f"still_{i}.png")
    return list_media(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_media(root / "data", args.files)
        model = load_caption_model(
            str(write_tiny_vlm(root / "vlm", "qwen2_5_vl")), torch.device("cpu"), torch.float32
        )
        options = FrameOptions(frames=args.frames)
        sink = TextSink(root / "data", "txt")
        prepared = {}
        for path in files:
            visual = load_visual(path, options)
            prepared[path] = model.inputs(visual, render_prompt(None, "motion", visual.is_clip, None))
        config = copy.copy(model.generation_config)
        config.max_new_tokens = args.tokens

        def cadence(path: Path) -> None:
            visual = load_visual(path, options)
            prompt = render_prompt(None, "motion", visual.is_clip, None)
            sink.write(path, model.caption(visual, prompt, args.tokens).text or "-")

        def bare(path: Path) -> None:
            with torch.inference_mode():
                model.model.generate(**prepared[path], generation_config=config)

        for path in files:  # warm-up
            cadence(path), bare(path)
        ours, theirs = [], []
        for round_index in range(args.rounds):
            for k, path in enumerate(files):
                if (round_index + k) % 2 == 0:
                    ours.append(seconds(lambda p=path: cadence(p)))
                    theirs.append(seconds(lambda p=path: bare(p)))
                else:
                    theirs.append(seconds(lambda p=path: bare(p)))
                    ours.append(seconds(lambda p=path: cadence(p)))
    pairs = Pairs(ours, theirs)
    per_ours, per_bare = (ms / 1e3 for ms in pairs.median_ms())
    sys.stdout.write(
        f"tiny Qwen2.5-VL on CPU, {args.files} files ({args.files - args.files // 2} clips x {args.frames} frames, "
        f"{args.files // 2} images), {args.tokens} new tokens, {args.rounds} rounds, 1 thread\n"
        f"  cadence caption path: {1 / per_ours:7.2f} captions/s\n"
        f"  bare generate:        {1 / per_bare:7.2f} captions/s\n"
        f"  {ratio_line('per caption, cadence/bare', pairs)}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
