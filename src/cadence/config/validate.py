"""`cadence validate CONFIG`: print the resolved config (every default filled) or every error in it."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from cadence.config.errors import ConfigError, format_path
from cadence.config.loader import is_seed_layout, load_config_dict, process_prefix, read_config_file
from cadence.config.schema import JobConfig

log = logging.getLogger(__name__)


def dump_resolved(cfg: JobConfig) -> str:
    """The resolved config as YAML in the flat layout; loading it back gives an equal JobConfig, except
    that secrets (webhook URLs and tokens) read `<redacted>`: they are never written to disk or shown."""
    from cadence.tracking.secrets import redact_config

    data = redact_config(cfg)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def config_hash(cfg: JobConfig) -> str:
    """Short fingerprint of the resolved config (stored in LoRA metadata and run folders); secrets do not
    enter it, so nothing derived from one leaves the machine. Where the run is written (`training_folder`)
    is not part of what was trained: the same job run in two folders writes byte-identical files."""
    from cadence.tracking.secrets import redact_config

    settings = redact_config(cfg)
    settings.pop("training_folder", None)
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def filesystem_issues(cfg: JobConfig, prefix: str = "") -> list[tuple[str, str]]:
    """Problems only the filesystem can show: dataset folders that are missing or not folders."""
    issues = []
    for i, ds in enumerate(cfg.datasets):
        path = format_path(("datasets", i, "folder_path"), prefix)
        if not ds.folder_path.exists():
            issues.append((path, f"folder '{ds.folder_path}' does not exist; create it or fix the path"))
        elif not ds.folder_path.is_dir():
            issues.append((path, f"'{ds.folder_path}' is a file, expected a folder of media and captions"))
    if not cfg.datasets:
        issues.append((format_path(("datasets",), prefix), "no datasets; add at least one folder_path"))
    issues.extend(_model_issues(cfg, prefix))
    return issues


def _model_issues(cfg: JobConfig, prefix: str) -> list[tuple[str, str]]:
    """A local model folder (extras_name_or_path beside single-file checkpoints) must hold the arch the config
    names, and each checkpoint file must be a transformer of it (checked without reading weights)."""
    from cadence.models.base import ModelLoadError
    from cadence.models.registry import check_model
    from cadence.models.single_file import file_header, transformer_files

    folder = Path(cfg.model.folder_spec).expanduser()
    try:
        if not folder.is_dir():  # a hub id: checked when the model is loaded (offline, with a clear error)
            for path, key in transformer_files(cfg.model).values():
                file_header(path, key)  # a local checkpoint file is read now (its header)
            return []
        check_model(cfg.model)
    except ModelLoadError as error:
        key, _, rest = str(error).partition(": ")
        if key.startswith("model.") and " " not in key:  # the message names its key: report it there
            return [(format_path(tuple(key.split("."))[:3], prefix), rest)]
        return [(format_path(("model", cfg.model.folder_key), prefix), str(error))]
    from cadence.networks.preflight import network_issues  # the adapters on an empty (meta) model

    return network_issues(cfg, folder, prefix)


def _prefixed(path: str, prefix: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def _process_body(data: dict[str, Any]) -> dict[str, Any]:
    """The process section as written (seed layout: config.process[0]); {} when the file has none."""
    if not is_seed_layout(data):
        return data
    process = data.get("config", {}).get("process") if isinstance(data.get("config"), dict) else None
    body = process[0] if isinstance(process, list) and process else None
    return body if isinstance(body, dict) else {}


def _raw_folder_issues(body: dict[str, Any], base: Path, prefix: str) -> list[tuple[str, str]]:
    """Dataset folders of a config that did not validate, so a missing folder is in the same report."""
    datasets = body.get("datasets")
    issues = []
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        folder = ds.get("folder_path") if isinstance(ds, dict) else None
        if not isinstance(folder, str) or not folder:
            continue
        path = Path(folder).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        if not path.exists():
            where = format_path(("datasets", i, "folder_path"), prefix)
            issues.append((where, f"folder '{path}' does not exist; create it or fix the path"))
    return issues


def _timestep_range_issues(cfg: JobConfig, prefix: str) -> list[tuple[str, str]]:
    """min/max_denoising_steps that leave a trained expert no noise level (the expert boundary comes from the
    model folder when it is local, else the arch's published value), found here rather than at train start."""
    from cadence.models.base import ModelLoadError, experts_for
    from cadence.models.registry import TWO_EXPERT, read_model_index, resolve_boundary
    from cadence.networks.preflight import trained_components
    from cadence.schedule.timesteps import range_problems, sampler_for

    folder = Path(cfg.model.folder_spec).expanduser()
    try:
        index = read_model_index(folder) if folder.is_dir() else {}
    except ModelLoadError:
        return []  # the model check reports it
    boundary = resolve_boundary(cfg.model.arch, index, cfg.model.model_kwargs.boundary_ratio)
    trained = trained_components(cfg)
    specs = [s for s in experts_for(cfg.model.arch in TWO_EXPERT, boundary) if s.name in trained]
    problems = range_problems(sampler_for(cfg.train), {s.name: (s.t_low, s.t_high) for s in specs})
    return [(_prefixed(key, prefix), message) for key, message in problems]


def check_config_file(
    path: str | Path, machine: bool = True, dataset_config: str | Path | None = None
) -> JobConfig:
    """Load a config file (its datasets replaced by a musubi-tuner `dataset_config` when given) and check
    the filesystem and (with `machine`) this machine's GPU and packages; raises one ConfigError listing every
    problem: a config that does not validate still gets its folders and this machine checked, so a user
    fixes everything in one pass."""
    path = Path(path)
    data = read_config_file(path)  # a file that does not parse has nothing else to check
    prefix = process_prefix(data)
    issues: list[tuple[str, str]] = []
    cfg: JobConfig | None = None
    try:
        cfg = load_config_dict(data, path, dataset_config)
    except ConfigError as exc:
        issues += exc.issues
    body = _process_body(data)
    if cfg is not None:
        issues += filesystem_issues(cfg, prefix)
    elif dataset_config is None:
        issues += _raw_folder_issues(body, path.parent, prefix)
    if machine:
        from cadence.train.machine import MachineNeeds, machine_issues  # imports torch and diffusers

        needs = MachineNeeds.of(cfg) if cfg is not None else MachineNeeds.from_raw(body)
        issues += [(format_path(where, prefix), message) for where, message in machine_issues(needs)]
    if cfg is not None:
        issues += _timestep_range_issues(cfg, prefix)
        from cadence.sampling.validation import validate_samples  # sizes, control images, sage on this host

        issues += [
            (_prefixed(key, prefix), message) for key, message in validate_samples(cfg, machine=machine)
        ]
    if issues or cfg is None:
        raise ConfigError(issues, path)
    return cfg


def alpha_report(cfg: JobConfig) -> list[str]:
    """What the alphas of the trained adapters will be, in words: which phase list drives which adapter kind
    of each expert (the seed's conv phases drive the Linear adapters on Wan, whose blocks have no Conv layers)
    and what becomes of linear_alpha. Printed by `cadence validate`, logged again at train time."""
    linear, conv = cfg.network.resolved_linear_alpha, cfg.network.resolved_conv_alpha
    kinds, assumed = _trained_kinds(cfg)
    schedule = cfg.network.alpha_schedule
    tail = " (the model is not a local folder: Conv adapters assumed from network.conv and include_patterns)"
    if schedule is None or not schedule.enabled:
        net = cfg.network
        if net.algo == "lokr" and net.lokr_full_rank:
            line = (
                "alphas: LoKr with full factors has no rank and no alpha: scale 1 (linear_alpha is not used)"
            )
        else:
            line = f"alphas: Linear adapters at linear_alpha {linear:g} (rank {net.linear})"
        if "conv" in kinds:
            line += f", Conv adapters at conv_alpha {conv:g}"
        if net.pretrained_lora_path:
            line += "; a fresh run keeps the alphas stored in network.pretrained_lora_path's files instead"
        return [line + (tail if assumed else "")]
    from cadence.config.errors import ConfigError as PhaseError
    from cadence.networks.preflight import trained_components
    from cadence.schedule.alpha_phases import plan_phases

    experts = list(trained_components(cfg))
    try:
        plans, notes = plan_phases(schedule, experts, kinds)
    except PhaseError:
        return []  # the config check reports it
    lines = list(notes)
    fixed = schedule.linear_alpha if schedule.linear_alpha is not None else linear
    for expert, plan in plans.items():
        for kind in ("linear", "conv"):
            if kind not in kinds:
                continue
            name = "Linear" if kind == "linear" else "Conv"
            if kind in plan.alphas:
                steps = " -> ".join(
                    f"{ph.name} {a:g}" for ph, a in zip(plan.phases, plan.alphas[kind], strict=True)
                )
                lines.append(f"alpha phases [{expert}]: {name} adapters {steps}")
            else:
                lines.append(
                    f"alpha phases [{expert}]: {name} adapters fixed at {fixed if kind == 'linear' else conv:g}"
                )
    return [line + (tail if assumed else "") for line in lines]


def _trained_kinds(cfg: JobConfig) -> tuple[set[str], bool]:
    """Adapter kinds ("linear", "conv") the config trains, from the local model's layers on the meta device;
    for a hub id (second value True) assumed: Conv only when network.conv and include_patterns add Conv layers
    (Wan's transformer blocks are Linear-only)."""
    folder = Path(cfg.model.folder_spec).expanduser()
    if folder.is_dir():
        from cadence.networks.preflight import meta_transformer, trained_components
        from cadence.networks.targeting import is_conv, select_targets

        kinds: set[str] = set()
        try:
            for component in trained_components(cfg).values():
                targets = select_targets(meta_transformer(folder, component), cfg.network, warn=False)
                kinds |= {"conv" if is_conv(m) else "linear" for m in targets.values()}
            return kinds, False
        except (OSError, ValueError):
            pass  # the model and network checks report what is wrong
    conv = cfg.network.conv_rank is not None and bool(cfg.network.network_kwargs.include_patterns)
    return ({"linear", "conv"} if conv else {"linear"}), True


def validate_command(args: argparse.Namespace) -> int:
    """Exit 0 with the resolved YAML on stdout, or exit 2 with the errors on stderr."""
    try:
        cfg = check_config_file(
            args.config, machine=not args.config_only, dataset_config=getattr(args, "dataset_config", None)
        )
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write(f"# resolved config ({args.config}), config hash {config_hash(cfg)}\n")
    for line in alpha_report(cfg):
        sys.stdout.write(f"# {line}\n")
    from cadence.networks.preflight import loader_notes  # which Wan tools load the files this job writes

    for line in loader_notes(cfg):
        sys.stdout.write(f"# {line}\n")
    sys.stdout.write(dump_resolved(cfg))
    return 0
