"""Adapter checks before any weights are read: the network a config asks for, built on an empty model.

Each trained expert's transformer is instantiated from its `config.json` on the meta device (diffusers'
class named in the config; no memory, no weights), so target filters, LoKr factors and adapter kinds are
checked against the real layer names and sizes in a second, at `cadence validate` and before `cadence
train` loads the model: a factor that does not divide a layer is a config error at `network.lokr_factor`,
not a traceback after minutes of loading.
"""

from __future__ import annotations

import math
from functools import reduce
from pathlib import Path

from torch import nn

from cadence.config.errors import format_path
from cadence.config.schema import JobConfig, NetworkConfig
from cadence.networks.targeting import is_conv, select_targets

Issue = tuple[str, str]


def meta_transformer(folder: Path, component: str) -> nn.Module:
    """`folder/component` built from its config.json on the meta device (diffusers class of `_class_name`):
    a single-file checkpoint's transformer too (`from_single_file` builds it from the same config)."""
    from cadence.models.single_file import meta_model

    return meta_model(folder, component)  # a broken file names itself


def trained_components(cfg: JobConfig) -> dict[str, str]:
    """{expert: pipeline component} of the experts this config trains."""
    from cadence.models.base import experts_for
    from cadence.models.registry import TWO_EXPERT

    kw = cfg.model.model_kwargs
    wanted = {"high_noise": kw.train_high_noise, "low_noise": kw.train_low_noise}
    specs = experts_for(cfg.model.arch in TWO_EXPERT, 0.5)
    return {s.name: s.component for s in specs if wanted.get(s.name, True)}


def _sizes(module: nn.Module) -> tuple[int, int]:
    if is_conv(module):
        return int(module.out_channels), int(module.in_channels)
    return int(module.out_features), int(module.in_features)


def adapter_problems(root: nn.Module, cfg: NetworkConfig) -> list[tuple[tuple[str, ...], str]]:
    """(config key, message) for every way the configured adapters cannot be built on `root`'s layers."""
    try:
        targets = select_targets(root, cfg, warn=False)
    except ValueError as exc:
        return [(("network", "network_kwargs"), str(exc))]
    problems: list[tuple[tuple[str, ...], str]] = []
    if cfg.algo in ("lokr", "loha"):
        convs = sorted(n for n, m in targets.items() if is_conv(m))
        if convs:
            problems.append(
                (
                    ("network", "type"),
                    f"{cfg.type} adapts Linear layers only in Cadence, but Conv layers are targeted ({convs[0]}); "
                    "use type locon for them, or remove them from network_kwargs.include_patterns",
                )
            )
    if cfg.algo == "lokr" and cfg.lokr_factor > 0:
        bad = {
            n: size
            for n, m in targets.items()
            if not is_conv(m)
            for size in _sizes(m)
            if size % cfg.lokr_factor
        }
        if bad:
            name = next(iter(bad))
            sizes = {s for m in targets.values() if not is_conv(m) for s in _sizes(m)}
            common = reduce(math.gcd, sizes)
            options = [f for f in (2, 4, 8, 16, 32, 64) if common % f == 0]
            hint = f"e.g. {' or '.join(map(str, options[-2:]))}, " if options else ""
            problems.append(
                (
                    ("network", "lokr_factor"),
                    f"{cfg.lokr_factor} does not divide the size {bad[name]} of {name} "
                    f"({len(bad)} adapted layer(s) in all); LoKr splits every layer's sizes by the factor: use a "
                    f"divisor of all of them ({hint}divisors of {common}), or -1 for automatic",
                )
            )
    return problems


def network_issues(cfg: JobConfig, folder: Path, prefix: str = "") -> list[Issue]:
    """Config issues of the adapter network on the model in local `folder` (one report for all experts),
    and whether the LoRA files the config starts from fit it (`networks/existing.py`)."""
    from cadence.networks.existing import file_issues

    seen: dict[tuple[tuple[str, ...], str], None] = {}
    trained: dict[str, object] = {}
    roots: dict[str, nn.Module] = {}
    for expert, component in all_components(cfg).items():
        if not (folder / component / "config.json").is_file():
            continue  # the model check reports the missing component
        root = roots[expert] = meta_transformer(folder, component)
        if expert not in trained_components(cfg):
            continue
        problems = adapter_problems(root, cfg.network)
        for key, message in problems:
            seen.setdefault((key, message), None)
        if not problems:
            rank = (
                cfg.network.linear if cfg.network.algo != "lokr" or not cfg.network.lokr_full_rank else None
            )
            trained[expert] = (cfg.network.algo, rank, select_targets(root, cfg.network, warn=False))
    for key, message in file_issues(cfg.network.pretrained_lora_path, cfg.model.lora_path, roots, trained):
        seen.setdefault((key, message), None)
    return [(format_path(key, prefix), message) for key, message in seen]


def all_components(cfg: JobConfig) -> dict[str, str]:
    """{expert: pipeline component} of every expert of the model, trained or not."""
    from cadence.models.base import experts_for
    from cadence.models.registry import TWO_EXPERT

    return {s.name: s.component for s in experts_for(cfg.model.arch in TWO_EXPERT, 0.5)}


def loader_notes(cfg: JobConfig) -> list[str]:
    """Which tools will load this job's LoRA files (save.format, type, targets) and what to do for the others;
    empty for a model that is not a local folder yet (the targets need its layer names)."""
    from cadence.networks.algos import dora_axis
    from cadence.networks.loaders import FileShape, summary_lines

    folder = Path(cfg.model.folder_spec).expanduser()
    components = trained_components(cfg)
    if not folder.is_dir() or not components:
        return []
    component = next(iter(components.values()))
    if not (folder / component / "config.json").is_file():
        return []
    try:
        targets = select_targets(meta_transformer(folder, component), cfg.network, warn=False)
    except ValueError:
        return []  # reported as a config issue
    shape = FileShape(
        cfg.save.format,
        frozenset({cfg.network.algo}),
        dora_axis(cfg.network),
        {name: is_conv(module) for name, module in targets.items()},
    )
    return summary_lines(shape)
