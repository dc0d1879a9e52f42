"""The one `cadence` entry point. Each subcommand imports its implementation lazily so `--help` is fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

# subcommand -> "module:function"; each function takes the parsed argparse.Namespace and returns an exit code.
HANDLERS: dict[str, str] = {
    "train": "cadence.train.runner:train_command",
    "validate": "cadence.config.validate:validate_command",
    "cache": "cadence.data.cache_command:cache_command",
    "tiny-model": "cadence.models.tiny:tiny_model_command",
    "demo": "cadence.demo:demo_command",
    "analyze": "cadence.tools.analyze:analyze_command",
    "ema-merge": "cadence.tools.ema_merge:ema_merge_command",
    "convert": "cadence.tools.convert:convert_command",
    "inspect": "cadence.tools.inspect:inspect_command",
    "ui": "cadence.ui.server:ui_command",
    "sample": "cadence.sampling.command:sample_command",
    "caption": "cadence.tools.caption:caption_command",
    "publish": "cadence.tools.publish:publish_command",
}


def _dataset_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset-config",
        dest="dataset_config",
        default=None,
        metavar="FILE",
        help="a musubi-tuner dataset config (.toml/.json) whose datasets replace CONFIG's (docs/config.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadence", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) the job described by CONFIG")
    p.add_argument("config")
    _dataset_config_option(p)
    p = sub.add_parser("validate", help="print the resolved config or every error in it")
    p.add_argument("config")
    _dataset_config_option(p)
    p.add_argument(
        "--config-only",
        action="store_true",
        help="skip the checks of this machine (device, attention/optimizer/quantizer packages): for a config "
        "meant for another machine",
    )
    p = sub.add_parser("cache", help="encode VAE latents and text embeddings for CONFIG's datasets")
    p.add_argument("config")
    _dataset_config_option(p)
    p = sub.add_parser("tiny-model", help="write a tiny random-weight Diffusers pipeline folder")
    p.add_argument("dir")
    p.add_argument("--arch", default="wan22_14b_i2v")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("demo", help="tiny model + synthetic clips: validate, cache and train")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--steps", type=int, default=None)
    p = sub.add_parser("analyze", help="weight/loss health report of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--preset", default=None)
    p.add_argument(
        "--since", type=int, default=None, help="also report each expert's growth from this checkpoint"
    )
    p.add_argument("--until", type=int, default=None, help="... to this checkpoint (default: the latest)")
    p = sub.add_parser("ema-merge", help="post-hoc EMA over LoRA checkpoints")
    p.add_argument("files", nargs="+")
    p.add_argument("--output", required=True)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--beta2", type=float, default=None)
    p.add_argument("--sigma-rel", type=float, default=None)
    p = sub.add_parser("convert", help="convert a LoRA file between ComfyUI and diffusers layouts")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--to",
        required=True,
        choices=["comfyui", "diffusers", "kohya"],
        help="layout to write: comfyui (ComfyUI, diffusers for block modules), diffusers (diffusers/PEFT), "
        "kohya (lora_unet_ names: musubi-tuner, ComfyUI)",
    )
    p = sub.add_parser("inspect", help="rank, alpha, targets, magnitudes and metadata of a LoRA file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("sample", help="generate videos with trained LoRA files (same code as in training)")
    p.add_argument("target", help="a job config (its model and sample section) or a model folder")
    p.add_argument("--lora-high", dest="lora_high", default=None, help="high-noise expert LoRA file")
    p.add_argument("--lora-low", dest="lora_low", default=None, help="low-noise expert LoRA file")
    p.add_argument("--lora", default=None, help="LoRA file of a single-expert model")
    p.add_argument("--prompt", action="append", default=None)
    p.add_argument("--image", action="append", default=None, help="first frame for I2V (one per prompt)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--num-frames", dest="num_frames", type=int, default=None)
    p.add_argument("--multiplier", type=float, default=None)
    p.add_argument("--out", default="samples")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p = sub.add_parser("publish", help="upload a checkpoint, its samples and a model card to the Hub")
    p.add_argument("run_dir")
    p.add_argument("--repo", default=None, help="the Hub repo, user/name (not needed with --dry-run)")
    p.add_argument("--checkpoint", default=None, help="a step, 'latest' (default) or 'best' (analysis)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="only write RUN_DIR/hub_upload")
    p = sub.add_parser(
        "caption",
        help="caption a dataset folder's images and clips with a vision-language model (Qwen2.5-VL/Qwen3-VL)",
        description="Write a caption beside each image and clip of a dataset folder with a vision-language "
        "model; existing captions are kept unless --overwrite. @FILE reads further arguments from FILE, one "
        "per line.",
        fromfile_prefix_chars="@",
    )
    from cadence.tools.caption_args import add_caption_arguments

    add_caption_arguments(p)
    p = sub.add_parser("ui", help="web UI for queueing and watching jobs")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8675)
    p.add_argument("--home", default=None)
    return parser


def resolve_handler(command: str) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = HANDLERS[command].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(resolve_handler(args.command)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
