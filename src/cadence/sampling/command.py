"""`cadence sample CONFIG_OR_MODEL --lora-high FILE --lora-low FILE [--prompt ...] [--image ...]`.

Generates exactly as the in-training sampler does (same `SampleEngine`, same `LoRANetwork` hooks, same
spec resolution), so a LoRA file exported at step N gives the sample written at step N for the same seed.
With a config, its model, dtype, device and `sample:` section are used; with a model folder, the sample
settings come from the flags and the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch
from pydantic import ValidationError

from cadence.config.errors import ConfigError, format_path
from cadence.config.prompt_flags import item_from_flags
from cadence.config.schema import JobConfig, ModelConfig, SampleConfig, SamplePrompt, TrainConfig
from cadence.networks.formats import LoraFile, load_lora_file
from cadence.sample_flags import add_sample_arguments  # noqa: F401 - the command's flags live there

log = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _job_for(args: argparse.Namespace) -> JobConfig:
    """The job config: loaded from a config file, or a minimal one around a model folder."""
    target = Path(args.target).expanduser()
    if target.is_file() and target.suffix.lower() in CONFIG_SUFFIXES:
        from cadence.config.loader import load_config

        return load_config(target)
    if not (target / "model_index.json").is_file():
        raise ConfigError(
            [
                (
                    "target",
                    f"{target} is neither a config file ({', '.join(CONFIG_SUFFIXES)}) nor a "
                    "Diffusers Wan model folder (model_index.json)",
                )
            ]
        )
    from cadence.models.registry import detect_arch

    dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    return JobConfig(
        name="sample",
        model=ModelConfig(name_or_path=str(target), arch=detect_arch(target)),
        train=TrainConfig(dtype=dtype, disable_sampling=True),
    )


def _items(args: argparse.Namespace, sample: SampleConfig) -> list[SamplePrompt]:
    """--prompt replaces the config's samples; --image gives their ctrl_img (one for all, or one each)."""
    images = [Path(p).expanduser().resolve() for p in (args.image or [])]
    if args.prompt:
        items, issues = [], []
        for i, text in enumerate(args.prompt):  # the seed's inline flags, as in config prompts
            fields, found = item_from_flags({"prompt": text}, (f"--prompt[{i}]",))
            items.append(SamplePrompt(**fields))
            issues += [(format_path(where), message) for where, message in found]
        if issues:
            raise ConfigError(issues)
    else:
        items = list(sample.items)
    if images:
        if len(images) not in (1, len(items)):
            raise ConfigError(
                [
                    (
                        "--image",
                        f"got {len(images)} images for {len(items)} prompts; give one image "
                        "for all prompts or one per prompt",
                    )
                ]
            )
        items = [
            it.model_copy(update={"ctrl_img": images[0 if len(images) == 1 else i]})
            for i, it in enumerate(items)
        ]
    if not items:
        raise ConfigError(
            [("--prompt", "no prompts: pass --prompt TEXT or use a config with sample.samples")]
        )
    return items


def apply_overrides(cfg: JobConfig, args: argparse.Namespace) -> JobConfig:
    """The config with the command-line sample settings applied (validated like the config file)."""
    data = cfg.sample.model_dump()
    for flag, key in (
        ("steps", "sample_steps"),
        ("width", "width"),
        ("height", "height"),
        ("num_frames", "num_frames"),
        ("seed", "seed"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            data[key] = value
    items = _items(args, cfg.sample)
    if getattr(args, "seed", None) is not None:  # --seed wins over per-sample seeds
        items = [it.model_copy(update={"seed": None}) for it in items]
    data.update(samples=[it.model_dump() for it in items], prompts=[])
    try:
        sample = SampleConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]) from None
    update: dict = {"sample": sample}
    if getattr(args, "device", None):
        update["device"] = args.device
    return cfg.model_copy(update=update)


def _lora_plan(args: argparse.Namespace, experts: list[str]) -> dict[str, Path]:
    """expert -> LoRA file from --lora-high/--lora-low (two experts) or --lora (one expert)."""
    if experts == ["main"]:
        if args.lora_high or args.lora_low:
            raise ConfigError([("--lora-high/--lora-low", "this model has one expert; pass --lora FILE")])
        return {"main": Path(args.lora)} if args.lora else {}
    if args.lora:
        raise ConfigError(
            [
                (
                    "--lora",
                    "this model has two experts; pass --lora-high FILE and/or --lora-low FILE "
                    "(an expert without a file runs as the base model)",
                )
            ]
        )
    plan = {"high_noise": args.lora_high, "low_noise": args.lora_low}
    return {e: Path(f) for e, f in plan.items() if f}


FLAGS = {"high_noise": "--lora-high", "low_noise": "--lora-low", "main": "--lora"}


def _read_lora_files(loras: dict[str, Path], arch: str) -> dict[str, LoraFile]:
    """Every planned file, read and checked against the expert it is given to (Cadence files record theirs)."""
    files, issues = {}, []
    for expert, path in loras.items():
        lora = files[expert] = load_lora_file(path)
        trained_for = lora.metadata.get("expert")
        if {trained_for, expert} <= {"high_noise", "low_noise"} and trained_for != expert:
            issues.append(
                (
                    FLAGS[expert],
                    f"{path} was trained for the {trained_for} expert; pass it with {FLAGS[trained_for]}",
                )
            )
        elif trained_for in FLAGS and trained_for != expert:  # e.g. a Wan 2.2 expert's file on Wan 2.1
            log.warning("%s was trained for the %s expert, sampling it as %s", path, trained_for, expert)
        if lora.metadata.get("arch") not in (None, arch):
            log.warning("%s was trained on %s, sampling it on %s", path, lora.metadata["arch"], arch)
    if issues:
        raise ConfigError(issues)
    return files


def generate_from_files(
    cfg: JobConfig, loras: dict[str, Path], out_dir: Path, multiplier: float | None = None
) -> list[Path]:
    """Load the model, attach `loras` (expert -> file) and write every sample of `cfg` to `out_dir`."""
    from cadence.models.registry import load_model_adapter
    from cadence.networks.existing import merge_base_lora
    from cadence.sampling.generate import SampleEngine
    from cadence.sampling.loras import attach_lora_file, lora_step
    from cadence.sampling.prompts import resolve_samples
    from cadence.sampling.training import run_specs
    from cadence.train.precision import resolve_device, resolve_dtype

    files = _read_lora_files(loras, cfg.model.arch)  # before minutes of model loading: fail fast
    adapter = load_model_adapter(cfg.model, resolve_device(cfg.device), resolve_dtype(cfg.train.dtype))
    merge_base_lora(cfg.model.lora_path, adapter)  # the base the LoRA was trained on, as in training
    experts = [spec.name for spec in adapter.experts]
    unknown = sorted(set(loras) - set(experts))
    if unknown:
        raise ConfigError([("--lora", f"the model has experts {experts}, not {unknown}")])
    networks, steps = {}, []
    for expert, path in loras.items():
        networks[expert], lora = attach_lora_file(adapter.transformer(expert), path, expert, files[expert])
        steps.append(lora_step(lora))
    specs = resolve_samples(cfg, adapter.native_fps)
    if multiplier is not None:
        specs = [dataclasses.replace(s, multiplier=float(multiplier)) for s in specs]
    engine = SampleEngine(adapter, networks, cfg.sample)
    engine.prepare_texts([t for s in specs for t in (s.prompt, s.neg)])
    step = max((s for s in steps if s is not None), default=0)
    extra = {"lora_files": {e: str(p) for e, p in loras.items()}}
    return run_specs(engine, specs, step, out_dir, extra=extra)


def sample_command(args: argparse.Namespace) -> int:
    from cadence.models.base import ModelLoadError
    from cadence.models.registry import TWO_EXPERT
    from cadence.sampling.validation import validate_samples

    try:
        cfg = apply_overrides(_job_for(args), args)
        experts = ["high_noise", "low_noise"] if cfg.model.arch in TWO_EXPERT else ["main"]
        loras = _lora_plan(args, experts)
        problems = validate_samples(cfg, require_enabled=False)
        if problems:
            raise ConfigError(problems)
        out_dir = Path(args.out).expanduser()
        written = generate_from_files(cfg, loras, out_dir, args.multiplier)
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    except (ModelLoadError, ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    except torch.OutOfMemoryError:
        sys.stderr.write(
            "error: out of memory while sampling; lower --width/--height/--num-frames or set "
            "model.low_vram: true in the config\n"
        )
        return 4
    for path in written:
        _out(str(path))
    return 0
