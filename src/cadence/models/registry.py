"""The registered model families, and loading a model (local folder, hub id, or single-file transformer
checkpoints beside `model.extras_name_or_path`) through its family.

A family is one module in this package exposing `FAMILY` (a `cadence.models.family.ModelFamily`); this
module lists them and is the only place that does. Everything cheap is checked before any weights are read:
the folder exists, `model_index.json` says which family and arch it holds, that arch is accepted for
`model.arch`, every component the arch needs is on disk, and each single-file transformer checkpoint converts
to exactly the transformer the folder's config describes (`single_file.py`).
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from pathlib import Path

import torch

from cadence.models.base import ArchMismatchError, ModelAdapter, ModelLoadError
from cadence.models.family import ArchSpec, ModelFamily
from cadence.models.folders import (  # noqa: F401 - re-exported: older callers import them from here
    WEIGHT_SUFFIXES,
    check_components,
    encoder_digest,
    read_json,
    read_model_index,
    resolve_model_folder,
    snapshot,
)

log = logging.getLogger(__name__)

# The families Cadence trains, in the order detection tries them (the first one whose `detect` answers).
FAMILY_MODULES = (
    "cadence.models.wan_family",
    "cadence.models.flux",
    "cadence.models.qwen_image",
    "cadence.models.zimage",
)


@cache
def families() -> tuple[ModelFamily, ...]:
    return tuple(importlib.import_module(name).FAMILY for name in FAMILY_MODULES)


def arch_names() -> tuple[str, ...]:
    """Every arch of every family, in registry order."""
    return tuple(arch for family in families() for arch in family.archs)


def canonical_arch(value: str) -> str | None:
    """`value` as a registered arch (ai-toolkit's spellings resolved), or None."""
    for family in families():
        if (arch := family.canonical(value)) is not None:
            return arch
    return None


def family_of(arch: str) -> ModelFamily:
    for family in families():
        if arch in family.archs:
            return family
    raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(arch_names())}")


def arch_spec(arch: str) -> ArchSpec:
    return family_of(arch).archs[arch]


def family_for_transformer(module: torch.nn.Module) -> ModelFamily | None:
    """The family whose denoiser class `module` is (by class name), or None."""
    name = type(module).__name__
    for family in families():
        if name in family.transformer_classes:
            return family
    return None


def block_layout(names) -> dict[str, tuple[int, str]]:
    """Module name -> (its block's place in execution order, its name inside the block) for the names inside
    the repeated blocks, by the family whose key map knows them all (Wan's `blocks.N.` when none does). A later
    block list's blocks are numbered after the highest block of the earlier lists among `names` (FLUX's single
    blocks after its double blocks), so every block of a file or network gets its own number."""
    names = list(names)
    family = next((f for f in families() if f.keymap.knows(names)), families()[0])
    found = {n: b for n in names if (b := family.block_of(n)) is not None}
    offsets, start = {}, 0
    for which in range(len(family.block_lists)):
        offsets[which] = start
        numbers = [number for w, number, _ in found.values() if w == which]
        start += max(numbers) + 1 if numbers else 0
    return {n: (offsets[w] + number, inner) for n, (w, number, inner) in found.items()}


ARCHS = arch_names()
TWO_EXPERT = tuple(a for a in ARCHS if arch_spec(a).two_experts)
DEFAULT_BOUNDARY = {a: arch_spec(a).default_boundary for a in TWO_EXPERT}


def arch_geometry(arch: str) -> tuple[int, int, int]:
    """(spatial_multiple, temporal_multiple, native_fps) of `arch` without loading anything (buckets, UI)."""
    return arch_spec(arch).geometry()


def resolve_boundary(arch: str, index: dict, override: float | None) -> float | None:
    """Expert boundary: config override, else the folder's `boundary_ratio`, else the published value."""
    return arch_spec(arch).boundary(index, override)


def required_components(arch: str) -> tuple[str, ...]:
    """Pipeline components Cadence loads for `arch` (sampling reuses them; nothing else is read)."""
    return family_of(arch).required_components(arch)


def detect_arch(folder: str | Path, key: str = "model.name_or_path") -> str:
    """Which registered arch a Diffusers folder holds, from model_index.json and its component configs."""
    folder = Path(folder)
    index = read_model_index(folder, key)
    for family in families():
        arch = family.detect(folder, index)
        if arch is not None:
            return arch
    titles = ", ".join(f.title for f in families())
    raise ModelLoadError(
        f"{folder / 'model_index.json'}: _class_name is {index.get('_class_name')!r}, not a pipeline of a "
        f"model family Cadence trains ({titles})"
    )


def check_model(model_cfg) -> Path:
    """Cheap pre-flight of `model_cfg` (cadence.config.schema.ModelConfig; no weights read): the folder (or
    extras_name_or_path beside single-file checkpoints) exists and holds `model.arch` with its components, and
    each single-file transformer checkpoint is one of that arch. Returns the local folder."""
    return _checked(model_cfg)[0]


def _checked(model_cfg) -> tuple[Path, str, dict[str, Path]]:
    """(folder, detected arch, {component: single-file checkpoint}) after the checks of `check_model`."""
    from cadence.models.single_file import (
        check_transformer_file,
        file_header,
        source_issues,
        transformer_files,
    )

    for where, message in source_issues(model_cfg):  # what the config check reports at its key
        raise ModelLoadError(f"{'.'.join(where)}: {message}")
    family = family_of(model_cfg.arch)
    files = transformer_files(model_cfg)
    for path, file_key in files.values():
        file_header(path, file_key)  # a missing or broken file before any download
    key, spec, revision = f"model.{model_cfg.folder_key}", model_cfg.folder_spec, model_cfg.revision
    folder, from_hub = resolve_model_folder(spec, revision, key)
    detected = detect_arch(folder, key)
    if detected not in family.archs or not family.accepts(model_cfg.arch, detected):
        raise ArchMismatchError(
            f"model.arch is {model_cfg.arch!r} but {key} {spec} holds a {detected!r} model "
            f"(detected from {folder / 'model_index.json'} and its component configs). "
            f"Set model.arch: {detected} or point {key} at a {model_cfg.arch} folder."
        )
    components = family.required_components(detected)
    if from_hub:  # a single-file transformer needs only its config.json from the hub
        patterns = ["model_index.json"] + [
            f"{name}/config.json" if name in files else f"{name}/*" for name in components
        ]
        folder = snapshot(spec, revision, patterns, key)
    check_components(folder, detected, components, family.title, key, config_only=tuple(files))
    title = family.spec(detected).title
    for component, (path, file_key) in files.items():
        check_transformer_file(path, file_key, folder, component, title)
    return folder, detected, {component: path for component, (path, _key) in files.items()}


def model_id_of(model_cfg, folder: Path) -> str:
    """What cached latents and text embeddings are keyed by: the folder the VAE and text encoders come from
    (extras_name_or_path beside single-file checkpoints: latents do not depend on the transformer), its
    revision and the digest of those encoders' files."""
    family = family_of(model_cfg.arch)
    model_id = model_cfg.folder_spec + (f"@{model_cfg.revision}" if model_cfg.revision else "")
    return model_id + f"#{encoder_digest(folder, family.encoder_parts)}"


def load_model_adapter(model_cfg, device: torch.device, dtype: torch.dtype) -> ModelAdapter:
    """Load the model named by `model_cfg` (cadence.config.schema.ModelConfig) behind a ModelAdapter."""
    folder, arch, files = _checked(model_cfg)
    family = family_of(arch)
    model_id = model_id_of(model_cfg, folder)
    return family.load(folder, arch, model_cfg, torch.device(device), dtype, model_id, files=files)
