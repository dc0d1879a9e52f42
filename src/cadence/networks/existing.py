"""LoRA files a config names as a starting point: `network.pretrained_lora_path` and `model.lora_path`.

Both follow ai-toolkit, whose meaning they keep:
- `network.pretrained_lora_path`: the trained adapters start from this LoRA instead of from zero (only when
  the run has no checkpoint yet; a resume continues its own checkpoint). The file's modules, type and rank
  must be the ones the config trains; its alpha is kept (the weights were learned at that strength).
- `model.lora_path`: a LoRA merged into the frozen base before training (W += ΔW, before quantization), so
  the new adapter learns on top of it (e.g. a style or distillation LoRA). ai-toolkit merges it this way for
  its image models and refuses it for Wan; Cadence merges it on every family. Samples during training see
  the merged base; `cadence sample CONFIG` merges it too.

Files, per expert of a two-expert model, as ai-toolkit finds them: a path ending in `_high_noise.safetensors`
or `_low_noise.safetensors` stands for both sibling files (whichever exist), or a mapping names each expert's
file (`{high_noise: A, low_noise: B}`). A single-expert model takes one file. Any layout Cadence reads works.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from cadence.networks.formats import load_lora_file
from cadence.networks.tensors import AdapterTensors

log = logging.getLogger(__name__)

EXPERT_SUFFIXES = {"high_noise": "_high_noise.safetensors", "low_noise": "_low_noise.safetensors"}


class ExistingLoraError(ValueError):
    """A named LoRA file cannot serve as asked; the message names the key, file and what to do."""


def expert_files(value: str | Mapping[str, str], experts: list[str], key: str) -> dict[str, Path]:
    """{expert: file} for the model's `experts` (names from its expert table)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(experts))
        if unknown:
            raise ExistingLoraError(f"{key}: {unknown} are not experts of this model ({experts})")
        return {expert: Path(path) for expert, path in value.items()}
    path = Path(value)
    if len(experts) == 1:
        return {experts[0]: path}
    labelled = [e for e, suffix in EXPERT_SUFFIXES.items() if path.name.endswith(suffix)]
    if not labelled:
        raise ExistingLoraError(
            f"{key}: {path.name} does not say which expert it is for; this model has {experts}. Name an "
            f"expert's file (…_high_noise.safetensors: its _low_noise sibling is found beside it, as "
            f"ai-toolkit does) or give a mapping {{high_noise: FILE, low_noise: FILE}}"
        )
    stem = path.name[: -len(EXPERT_SUFFIXES[labelled[0]])]
    siblings = {e: path.with_name(stem + EXPERT_SUFFIXES[e]) for e in experts if e in EXPERT_SUFFIXES}
    found = {e: p for e, p in siblings.items() if p.is_file()}
    for expert in sorted(set(siblings) - set(found)):
        log.warning(
            "%s: no file for %s beside %s (%s); that expert gets none", key, expert, path, siblings[expert]
        )
    return found


def _read(path: Path, key: str) -> dict[str, AdapterTensors]:
    if not path.is_file():
        raise ExistingLoraError(f"{key}: {path} does not exist; fix the path (relative to the config file)")
    try:
        return load_lora_file(path).modules
    except (OSError, ValueError) as exc:
        raise ExistingLoraError(f"{key}: {path} is not a LoRA file Cadence can read ({exc})") from exc


def load_pretrained(networks: Mapping[str, nn.Module], files: Mapping[str, Path], key: str) -> None:
    """Copy each file's weights and alpha into the trained network of its expert (module sets, types and
    ranks must match the config's network exactly)."""
    for expert, path in files.items():
        if expert not in networks:
            log.info("%s: %s is for %s, which this run does not train; not loaded", key, path.name, expert)
            continue
        tensors = _read(path, key)
        try:
            networks[expert].load_lora_tensors(tensors)
        except ValueError as exc:
            raise ExistingLoraError(
                f"{key}: {path} does not fit the {expert} adapter this config trains ({exc}); set network.type, "
                "network.linear (rank) and the target filters to the file's, or start without it"
            ) from exc
        log.info("%s: %s starts from %s (%d modules)", key, expert, path, len(tensors))


@torch.no_grad()
def merge_into_base(transformers: Mapping[str, nn.Module], files: Mapping[str, Path], key: str) -> int:
    """W += ΔW of each file's modules into its expert's frozen transformer; returns the modules merged."""
    merged = 0
    for expert, path in files.items():
        root = transformers[expert]
        modules = dict(root.named_modules())
        tensors = _read(path, key)
        missing = sorted(name for name in tensors if not hasattr(modules.get(name), "weight"))
        if missing:
            raise ExistingLoraError(
                f"{key}: {path} adapts {len(missing)} layer(s) the {expert} transformer does not have (e.g. "
                f"{missing[0]}); is it a LoRA for this model?"
            )
        for name, t in tensors.items():
            weight = modules[name].weight
            delta = t if t.dora_scale is None else AdapterTensors(t.algo, t.tensors, t.alpha, weight)
            change = delta.diff_weight().to(weight.device)
            if change.shape != weight.shape:
                raise ExistingLoraError(
                    f"{key}: {path} module {name} changes a {list(change.shape)} weight, the layer is "
                    f"{list(weight.shape)}; is it a LoRA for this model?"
                )
            weight.copy_((weight.to(torch.float32) + change).to(weight.dtype))
        merged += len(tensors)
        log.info("%s: merged %s into the %s base (%d layers)", key, path.name, expert, len(tensors))
    return merged


def merge_base_lora(lora_path: str | Mapping[str, str] | None, adapter: object) -> None:
    """`model.lora_path` merged into each expert's frozen base of a loaded ModelAdapter (training and
    `cadence sample` call this right after loading, before quantization)."""
    if not lora_path:
        return
    experts = [spec.name for spec in adapter.experts]  # type: ignore[attr-defined]
    files = expert_files(lora_path, experts, "model.lora_path")
    merge_into_base({e: adapter.transformer(e) for e in files}, files, "model.lora_path")  # type: ignore[attr-defined]


def file_issues(
    pretrained: str | Mapping[str, str] | None,
    base_lora: str | Mapping[str, str] | None,
    roots: Mapping[str, nn.Module],
    trained: Mapping[str, object],
) -> list[tuple[tuple[str, ...], str]]:
    """Before any weights are loaded: do the named files fit? `roots` are every expert's transformers built
    empty (meta), `trained` the adapter config's targets per trained expert ({expert: {module: layer}}).
    Pretrained files must hold the trained type, rank and modules; base LoRAs must name layers that exist,
    with their shapes."""
    issues: list[tuple[tuple[str, ...], str]] = []
    experts = list(roots)
    for key, value, check in (
        (("network", "pretrained_lora_path"), pretrained, "pretrained"),
        (("model", "lora_path"), base_lora, "base"),
    ):
        if not value:
            continue
        try:
            files = expert_files(value, experts, ".".join(key))
            for expert, path in files.items():
                tensors = _read(path, ".".join(key))
                if check == "pretrained" and expert in trained:
                    issues += _fits_training(key, path, tensors, trained[expert])
                elif check == "base":
                    issues += _fits_base(key, path, tensors, roots[expert], expert)
        except ExistingLoraError as exc:
            issues.append((key, str(exc).partition(": ")[2] or str(exc)))
    return issues


def _fits_training(key, path: Path, tensors: Mapping[str, AdapterTensors], spec: object) -> list:
    """spec: (algo, rank or None, {module: layer}) of what the config trains on this expert."""
    algo, rank, targets = spec
    problems = []
    algos = {t.algo for t in tensors.values()}
    if algos != {algo}:
        problems.append(
            f"it holds {'/'.join(sorted(algos))} adapters, the config trains {algo} (network.type)"
        )
    ranks = {t.rank for t in tensors.values() if not t.is_conv} - {None}  # Conv adapters have network.conv
    if rank is not None and ranks and ranks != {rank}:
        problems.append(
            f"its rank is {'/'.join(map(str, sorted(ranks)))}, the config trains rank {rank} (network.linear)"
        )
    missing, extra = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
    if missing or extra:
        problems.append(
            f"its modules differ from the targeted ones ({len(missing)} targeted not in the file, e.g. "
            f"{(missing or ['-'])[0]}; {len(extra)} in the file not targeted, e.g. {(extra or ['-'])[0]}): "
            "match network_kwargs' filters to the file's"
        )
    if not problems:
        return []
    return [(key, f"{path} does not fit the adapter this config trains: " + "; ".join(problems))]


def _fits_base(key, path: Path, tensors: Mapping[str, AdapterTensors], root: nn.Module, expert: str) -> list:
    layers = dict(root.named_modules())
    unknown = sorted(name for name in tensors if not hasattr(layers.get(name), "weight"))
    if unknown:
        return [
            (
                key,
                f"{path} adapts {len(unknown)} layer(s) the {expert} transformer does not have (e.g. {unknown[0]}); is it a LoRA for this model?",
            )
        ]
    wrong = [
        name
        for name, t in tensors.items()
        if t.algo == "lora"
        and tuple(t.up.shape[:1]) + tuple(t.down.shape[1:2]) != tuple(layers[name].weight.shape[:2])
    ]
    if wrong:
        return [
            (
                key,
                f"{path} module {wrong[0]} does not match that layer's shape {list(layers[wrong[0]].weight.shape)}; is it a LoRA for this model?",
            )
        ]
    return []
