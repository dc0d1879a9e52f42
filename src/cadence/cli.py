"""The one `cadence` entry point. Each subcommand imports its implementation lazily so `--help` is fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable

from cadence.sample_flags import add_sample_arguments

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


# --arch values of `cadence tiny-model`: every registered arch (models/registry.py ARCHS) and the captioning
# VLMs (models/tiny_vlm.py VLM_ARCHS); listed here so `--help` needs no model code (a test keeps them equal)
TINY_ARCHS = (
    *("wan21", "wan21_i2v", "wan22_14b", "wan22_14b_i2v", "wan22_5b"),
    *("flux", "flux_schnell", "qwen_image", "zimage"),
    *("qwen2_5_vl", "qwen3_vl"),
)
ANALYZE_PRESETS = ("motion", "character", "none")  # config/health.py Preset, plus "none"
DESCRIPTION = (
    "Train LoRA/LyCORIS adapters for Wan video models (2.1, 2.2 A14B, TI2V-5B) from a job config "
    "(ai-toolkit's layout runs as is), and inspect, sample, analyze and convert what a run wrote. "
    "`cadence COMMAND -h` describes each command; docs/config.md describes the job config."
)
CONFIG_HELP = "job config file (.yaml, .yml, .toml or .json; ai-toolkit's layout or Cadence's flat layout)"


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own (argparse would join them into one)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.fill(part, width, initial_indent=indent, subsequent_indent=indent)
            for part in text.split("\n\n")
        )


def _command(
    sub: argparse._SubParsersAction, name: str, help: str, description: str = "", **kw
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=description or help, formatter_class=_HelpFormatter, **kw
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadence", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging for this command")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "train",
        "train (or resume) the job described by CONFIG",
        "Train the job described by CONFIG into its run folder, TRAINING_FOLDER/NAME. When that folder holds "
        "a checkpoint of this job, training resumes from the newest complete one by itself (step, optimizer, "
        "schedules, random streams and alpha phases exactly as saved); a folder with LoRA files but no usable "
        "training state is never trained over: the run stops and says what is there. Ctrl-C saves a "
        "checkpoint and stops; run the same command again to continue.",
    )
    p.add_argument("config", help=CONFIG_HELP)
    _dataset_config_option(p)
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over at step 0: the run folder's previous files (LoRA files, metrics, training state, "
        "samples) move to RUN_DIR/previous/<time>/; caches are kept",
    )
    p = _command(
        sub,
        "validate",
        "print the resolved config or every problem in it",
        "Check CONFIG and this machine without loading the model: the config's keys and values, the dataset "
        "folders, the model folder, the sample inputs and (unless --config-only) the device and the packages "
        "the config needs. Prints the resolved config (every default filled in, paths absolute; the alpha the "
        "adapters will train at as comments) and exits 0, or prints every problem in one report and exits 2.",
    )
    p.add_argument("config", help=CONFIG_HELP)
    _dataset_config_option(p)
    p.add_argument(
        "--config-only",
        action="store_true",
        help="skip the checks of this machine (device, attention/optimizer/quantizer packages): for a config "
        "meant for another machine",
    )
    p = _command(
        sub,
        "cache",
        "encode VAE latents and text embeddings for CONFIG's datasets",
        "Fill the latent and text caches CONFIG's training reads (the same files `cadence train` fills before "
        "its first step); entries already cached and unchanged are reused.",
    )
    p.add_argument("config", help=CONFIG_HELP)
    _dataset_config_option(p)
    p = _command(
        sub,
        "tiny-model",
        "write a tiny random-weight model folder (a Diffusers pipeline of any arch, or a captioning VLM)",
        "Write a complete model folder with tiny random weights: a Diffusers pipeline that its own class loads "
        "unchanged (WanPipeline / WanImageToVideoPipeline, FluxPipeline, QwenImagePipeline, ZImagePipeline "
        ".from_pretrained), or (qwen2_5_vl, qwen3_vl) a transformers vision-language model for `cadence caption`. "
        "For trying configs and tools without a real model.",
    )
    p.add_argument("dir", help="folder to write (created; prints its path)")
    p.add_argument(
        "--arch", default="wan22_14b_i2v", choices=TINY_ARCHS, help="model family (default: wan22_14b_i2v)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p = _command(
        sub,
        "demo",
        "tiny model + synthetic clips: validate, cache, train and analyze",
        "Write a tiny Wan 2.2 I2V model and synthetic clips into OUT, then validate, cache, train and analyze a "
        "job on them: the whole path on this machine in a few minutes, no downloads.",
    )
    p.add_argument("--out", default="demo_output", help="folder for the demo's files (default: demo_output)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300)")
    p = _command(
        sub,
        "analyze",
        "weight/loss health report of a run folder",
        "Measure a run folder's checkpoints and metrics (per-expert weight growth, loss trend, gradient "
        "stability, sample motion), run the health rules and recommend the checkpoints to keep.",
    )
    p.add_argument("run_dir", help="the run folder, TRAINING_FOLDER/NAME")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument(
        "--preset",
        default=None,
        choices=ANALYZE_PRESETS,
        help="health thresholds to judge by (default: train.health.preset of the run's config.yaml; none: no "
        "preset)",
    )
    p.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="STEP",
        help="also report each expert's growth from this checkpoint",
    )
    p.add_argument(
        "--until",
        type=int,
        default=None,
        metavar="STEP",
        help="... to this checkpoint (default: the latest; needs --since)",
    )
    p = _command(
        sub,
        "ema-merge",
        "post-hoc EMA over LoRA checkpoints",
        "Average saved LoRA checkpoints of one expert into one file, as an EMA over them in step order: "
        "w <- beta * w + (1 - beta) * w_i. Choose the betas with --beta (and --beta2), or with --sigma-rel "
        "(EDM2's power EMA), not both.",
    )
    p.add_argument("files", nargs="+", help="LoRA checkpoint files of one expert (any order; sorted by step)")
    p.add_argument("--output", required=True, help="the merged LoRA file to write")
    p.add_argument("--beta", type=float, default=None, help="constant beta of every update (default: 0.95)")
    p.add_argument(
        "--beta2",
        type=float,
        default=None,
        help="beta of the last update: beta runs linearly from --beta to it",
    )
    p.add_argument(
        "--sigma-rel",
        type=float,
        default=None,
        help="EDM2 power EMA of this relative width, in (0, 0.2887) (EDM2 uses 0.05-0.2); not with --beta/--beta2",
    )
    p = _command(
        sub,
        "convert",
        "convert a LoRA file between layouts",
        "Rewrite a LoRA file in another key layout, tensors bit for bit and every module's alpha kept.",
    )
    p.add_argument("input", help="LoRA file to read (Cadence, ComfyUI, diffusers/PEFT, kohya/musubi layouts)")
    p.add_argument("output", help="file to write (not the input)")
    p.add_argument(
        "--to",
        required=True,
        choices=["comfyui", "diffusers", "kohya"],
        help="layout to write: comfyui (ComfyUI, diffusers for block modules), diffusers (diffusers/PEFT), "
        "kohya (lora_unet_ names: musubi-tuner, ComfyUI)",
    )
    p = _command(sub, "inspect", "rank, alpha, targets, magnitudes and metadata of a LoRA file")
    p.add_argument("file", help="LoRA file (.safetensors) in any layout Cadence reads")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p = _command(
        sub,
        "sample",
        "generate videos with trained LoRA files (same code as in training)",
        "Generate samples with LoRA files on the base model, through the code training samples with. TARGET is "
        "a job config (its model and sample sections give the settings) or a Diffusers Wan model folder.",
    )
    add_sample_arguments(p)
    p = _command(
        sub,
        "publish",
        "upload a checkpoint, its samples and a model card to the Hub",
        "Upload one checkpoint of a run folder (its LoRA files, samples and a model card with the training "
        "settings and the analysis) to a Hugging Face Hub model repo; --dry-run writes the folder it would "
        "upload instead.",
    )
    p.add_argument("run_dir", help="the run folder, TRAINING_FOLDER/NAME")
    p.add_argument("--repo", default=None, help="the Hub repo, user/name (not needed with --dry-run)")
    p.add_argument("--checkpoint", default=None, help="a step, 'latest' (default) or 'best' (analysis)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="only write RUN_DIR/hub_upload")
    p = _command(
        sub,
        "caption",
        "caption a dataset folder's images and clips with a vision-language model (Qwen2.5-VL/Qwen3-VL)",
        "Write a caption file beside each image and clip of a dataset folder with a vision-language model; "
        "existing captions are kept unless --overwrite. @FILE reads further arguments from FILE, one per line.",
        fromfile_prefix_chars="@",
    )
    from cadence.tools.caption_args import add_caption_arguments

    add_caption_arguments(p)
    p = _command(
        sub,
        "ui",
        "web UI for queueing and watching jobs",
        "Serve the web UI: queue jobs on this machine's GPUs, watch their metrics, samples and health, edit "
        "captions.\n\nEnvironment: CADENCE_AUTH=TOKEN turns on login with that token (required to serve on "
        "any address other than localhost/127.0.0.1); CADENCE_HOME is the default --home.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; others need CADENCE_AUTH)",
    )
    p.add_argument("--port", type=int, default=8675, help="port (default: 8675)")
    p.add_argument(
        "--home",
        default=None,
        help="folder of the UI's job database and job files (default: $CADENCE_HOME, else ~/.cadence)",
    )
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
