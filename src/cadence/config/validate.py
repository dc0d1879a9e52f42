"""`cadence validate CONFIG`: print the resolved config (every default filled) or every error in it."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import yaml

from cadence.config.errors import ConfigError, format_path
from cadence.config.loader import load_config_dict, process_prefix, read_config_file
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
    enter it, so nothing derived from one leaves the machine."""
    from cadence.tracking.secrets import redact_config

    canonical = json.dumps(redact_config(cfg), sort_keys=True, separators=(",", ":"))
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
    """A local model folder must hold the arch the config names (checked without reading weights)."""
    folder = Path(cfg.model.name_or_path).expanduser()
    if not folder.is_dir():
        return []  # a hub id: checked when the model is loaded (offline, with a clear error)
    from cadence.models.base import ModelLoadError
    from cadence.models.registry import check_model

    try:
        check_model(str(folder), cfg.model.arch, cfg.model.revision)
    except ModelLoadError as error:
        return [(format_path(("model", "name_or_path"), prefix), str(error))]
    from cadence.networks.preflight import network_issues  # the adapters on an empty (meta) model

    return network_issues(cfg, folder, prefix)


def _prefixed(path: str, prefix: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def check_config_file(
    path: str | Path, machine: bool = True, dataset_config: str | Path | None = None
) -> JobConfig:
    """Load a config file (its datasets replaced by a musubi-tuner `dataset_config` when given) and check
    the filesystem and (with `machine`) this machine's GPU and packages; raises ConfigError listing every
    problem."""
    path = Path(path)
    data = read_config_file(path)
    cfg = load_config_dict(data, path, dataset_config)
    prefix = process_prefix(data)
    issues = filesystem_issues(cfg, prefix)
    if machine:
        from cadence.train.machine import machine_issues  # imports torch and diffusers' dispatcher

        issues += [(format_path(where, prefix), message) for where, message in machine_issues(cfg)]
    from cadence.sampling.validation import (
        validate_samples,
    )  # sample sizes, control images, sage on this host

    issues += [
        (_prefixed(path, process_prefix(data)), message)
        for path, message in validate_samples(cfg, machine=machine)
    ]
    if issues:
        raise ConfigError(issues, path)
    return cfg


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
    from cadence.networks.preflight import loader_notes  # which Wan tools load the files this job writes

    for line in loader_notes(cfg):
        sys.stdout.write(f"# {line}\n")
    sys.stdout.write(dump_resolved(cfg))
    return 0
