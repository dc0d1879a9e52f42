"""The `cadence caption` command line (kept free of torch/transformers imports so `cadence --help` is fast)."""

from __future__ import annotations

import argparse

STYLES = ("motion", "character")  # default prompts (caption_prompts.py)
FORMATS = ("text", "jsonl")  # outputs (caption_output.py)
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # the same list as cadence.models.caption_vlm (a test checks)
QUANTIZE_CHOICES = ("fp8", "nf4")


def add_caption_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `cadence caption`; `@FILE` reads further arguments from FILE, one per line."""
    p.add_argument(
        "dataset_dir", help="folder of images/clips (its top level, as the dataset loader reads it)"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model folder or hub id (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--prompt",
        default=None,
        help="instruction for the model instead of the built-in one ('\\n' = new line; {trigger} and {media} "
        "are filled in)",
    )
    p.add_argument("--prompt-file", dest="prompt_file", default=None, help="read the instruction from a file")
    p.add_argument(
        "--style",
        choices=STYLES,
        default="motion",
        help="built-in prompt: motion (default: movement and camera) or character (the subject named by "
        "--trigger-word, what varies around it)",
    )
    p.add_argument(
        "--trigger-word",
        dest="trigger_word",
        default=None,
        help="name the subject with this word in captions",
    )
    p.add_argument(
        "--output-format",
        dest="output_format",
        choices=FORMATS,
        default="text",
        help="text (default: a same-stem caption file per media file) or jsonl (DATASET_DIR/captions.jsonl)",
    )
    p.add_argument(
        "--caption-ext",
        dest="caption_ext",
        default="txt",
        help="extension of same-stem captions (default: txt)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing captions (kept by default)")
    p.add_argument(
        "--max-size",
        dest="max_size",
        type=int,
        default=1280,
        help="longer side of images in px (default: 1280)",
    )
    p.add_argument(
        "--video-max-size",
        dest="video_max_size",
        type=int,
        default=640,
        help="longer side of each clip frame in px (default: 640)",
    )
    p.add_argument(
        "--frames", type=int, default=8, help="frames sampled over each clip at their times (default: 8)"
    )
    p.add_argument(
        "--max-new-tokens",
        dest="max_new_tokens",
        type=int,
        default=256,
        help="longest caption in tokens (default: 256)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (default: CUDA when present, else cpu), cpu, cuda or cuda:N"
    )
    p.add_argument(
        "--dtype", default="auto", help="auto (default: bf16 on CUDA, fp32 on the CPU), bf16, fp16 or fp32"
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="fp8 (Cadence's block-scaled e4m3 language model) or nf4 (bitsandbytes, CUDA)",
    )
    p.add_argument("--status-file", dest="status_file", default=None, help=argparse.SUPPRESS)
