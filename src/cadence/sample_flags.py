"""The flags of `cadence sample`, in one place: the CLI's parser and the command's own tests use them.

Kept outside the `sampling` package (whose import loads torch) so building the CLI parser stays light
(`cadence --help` is fast).
"""

from __future__ import annotations

import argparse


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """TARGET and every option of `cadence sample`, with their defaults in the help."""
    parser.add_argument(
        "target", help="a job config (its model and sample sections) or a Diffusers Wan model folder"
    )
    parser.add_argument(
        "--lora-high", dest="lora_high", default=None, help="LoRA file of the high-noise expert"
    )
    parser.add_argument("--lora-low", dest="lora_low", default=None, help="LoRA file of the low-noise expert")
    parser.add_argument("--lora", default=None, help="LoRA file of a single-expert model (Wan 2.1, TI2V-5B)")
    parser.add_argument(
        "--prompt", action="append", default=None, help="prompt (repeatable); replaces the config's samples"
    )
    parser.add_argument(
        "--image",
        action="append",
        default=None,
        help="first frame for I2V (repeatable: one for all, or one per prompt)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="base seed (default: sample.seed; walk_seed adds the index)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: sample.sample_steps)"
    )
    parser.add_argument("--width", type=int, default=None, help="width in pixels (default: sample.width)")
    parser.add_argument("--height", type=int, default=None, help="height in pixels (default: sample.height)")
    parser.add_argument(
        "--num-frames",
        dest="num_frames",
        type=int,
        default=None,
        help="frames, 4k+1 (default: sample.num_frames)",
    )
    parser.add_argument(
        "--multiplier", type=float, default=None, help="LoRA strength of every sample (default: 1)"
    )
    parser.add_argument("--out", default="samples", help="output folder (default: samples)")
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:0 or cpu (default: the config's, else auto)"
    )
    parser.add_argument(
        "--dtype", default=None, help="model dtype for a model folder (default: bf16 on CUDA, else fp32)"
    )
