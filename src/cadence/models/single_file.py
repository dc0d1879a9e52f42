"""Single-file transformer checkpoints: `model.name_or_path: FILE.safetensors` beside
`model.extras_name_or_path: FOLDER_OR_HUB_ID` (ai-toolkit's keys), for every family.

The transformer is built by the diffusers class's own `from_single_file(FILE, config=FOLDER,
subfolder=COMPONENT)`: the folder's `COMPONENT/config.json` gives the architecture, diffusers' converter for
the class maps the file's names (the original / ComfyUI layout the checkpoints are published in, or diffusers'
own names) onto it. Every other component (VAE, text encoders, tokenizers, scheduler) comes from the folder as
usual. The two-expert Wan 2.2 A14B takes one file per expert, as ComfyUI ships it:
`name_or_path: {high_noise: FILE, low_noise: FILE}` (`transformer` and `transformer_2`).

diffusers itself leaves weights the file lacks uninitialised and only warns about the ones it does not know,
so `check_transformer_file` runs that same converter on the file's header alone (tensors on the meta device
with the stored shapes, nothing read) and compares the result with the model the config builds: a file of
another arch or variant, a LoRA, a quantized export or a layout diffusers cannot convert is an error naming the
key before any weights are read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from cadence.models.base import ModelLoadError

Issue = tuple[tuple[str, ...], str]

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# ----------------------------------------------------------------------------------- config checks
def source_issues(model_cfg: Any) -> list[Issue]:
    """(key, message) for a transformer source the arch cannot take, and for extras_name_or_path set where it
    is not read or missing where it is; nothing is read from disk."""
    from cadence.models.registry import arch_spec

    spec = arch_spec(model_cfg.arch)
    files, extras = model_cfg.transformer_files, model_cfg.extras_name_or_path
    where = ("model", "name_or_path")
    issues: list[Issue] = []
    if isinstance(model_cfg.name_or_path, dict) and not spec.two_experts:
        issues.append(
            (
                where,
                f"{spec.title} ({spec.name}) has one transformer: give one .safetensors file (or a folder)",
            )
        )
    elif isinstance(model_cfg.name_or_path, dict) and set(files) != set(spec.experts):
        issues.append(
            (
                where,
                f"{spec.title} has two experts; give a file for each: {{high_noise: FILE, low_noise: FILE}} "
                f"(got {', '.join(sorted(files))})",
            )
        )
    elif files and spec.two_experts and not isinstance(model_cfg.name_or_path, dict):
        issues.append(
            (
                where,
                f"{spec.title} has two experts, and one file is never loaded into both: ComfyUI ships one file per "
                "expert; give name_or_path: {high_noise: HIGH_NOISE_FILE, low_noise: LOW_NOISE_FILE} (or a "
                "Diffusers folder)",
            )
        )
    if files and not extras:
        issues.append(
            (
                ("model", "extras_name_or_path"),
                "is required with a single-file name_or_path: the VAE, text encoder(s), tokenizer(s), scheduler and "
                f"the transformer's config.json come from it; give a Diffusers {spec.title} folder or hub id",
            )
        )
    elif extras and extras.lower().endswith(".safetensors"):
        issues.append(
            (
                ("model", "extras_name_or_path"),
                f"{extras!r} is a file; it must be a Diffusers folder or hub id holding the other components",
            )
        )
    elif extras and not files and extras != model_cfg.name_or_path:
        issues.append(
            (
                ("model", "extras_name_or_path"),
                "is read only when name_or_path is a single-file transformer checkpoint (.safetensors); with a "
                "Diffusers folder or hub id every component comes from name_or_path (ai-toolkit too ignores it for "
                "a folder that holds its text encoder). Remove it, or set name_or_path to the transformer's "
                ".safetensors file",
            )
        )
    return issues


def transformer_files(model_cfg: Any) -> dict[str, tuple[Path, str]]:
    """{pipeline component: (checkpoint file, the config key naming it)}; empty for a folder or hub id."""
    from cadence.models.base import experts_for
    from cadence.models.registry import arch_spec

    components = {e.name: e.component for e in experts_for(arch_spec(model_cfg.arch).two_experts, 0.5)}
    out = {}
    for expert, path in model_cfg.transformer_files.items():
        key = "model.name_or_path" if expert == "main" else f"model.name_or_path.{expert}"
        out[components[expert]] = (Path(path).expanduser(), key)
    return out


# ------------------------------------------------------------------------------------- file checks
def file_header(path: Path, key: str) -> dict[str, torch.Tensor]:
    """{name: meta tensor of the stored dtype and shape} from a safetensors file's header (no weights read)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ModelLoadError(f"{key}: transformer checkpoint {path} does not exist; fix the path")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            out = {}
            for name in handle.keys():
                view = handle.get_slice(name)
                dtype = _DTYPES.get(view.get_dtype(), torch.uint8)
                out[name] = torch.empty(view.get_shape(), dtype=dtype, device="meta")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for broken headers
        raise ModelLoadError(
            f"{key}: {path} is not a readable .safetensors file ({exc}); re-download it"
        ) from exc
    if not out:
        raise ModelLoadError(f"{key}: {path} holds no tensors; it is not a transformer checkpoint")
    return out


def meta_model(folder: Path, component: str) -> torch.nn.Module:
    """`folder/component` built from its config.json on the meta device (diffusers class of `_class_name`); a
    broken config.json is a ModelLoadError naming it, an unknown class a ValueError."""
    import diffusers

    from cadence.models.folders import read_json

    config = read_json(folder / component / "config.json")
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None:
        raise ValueError(
            f"{folder / component / 'config.json'}: unknown diffusers class {config.get('_class_name')!r}"
        )
    with torch.device("meta"):
        return cls.from_config(config)


def _mapping_function(cls: type):
    """diffusers' checkpoint converter for `cls` (its from_single_file table), or None when it has none."""
    import diffusers
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    entry = SINGLE_FILE_LOADABLE_CLASSES.get(cls.__name__)
    if entry is None:
        entry = next(
            (
                e
                for name, e in SINGLE_FILE_LOADABLE_CLASSES.items()
                if issubclass(cls, getattr(diffusers, name))
            ),
            None,
        )
    return None if entry is None else entry["checkpoint_mapping_fn"]


def check_transformer_file(path: Path, key: str, folder: Path, component: str, title: str) -> None:
    """Raise a ModelLoadError naming `key` unless diffusers' converter turns the file into exactly the weights
    of the model `folder/component/config.json` describes (every weight, no other, each of its shape)."""
    checkpoint = file_header(path, key)
    try:
        model = meta_model(folder, component)
    except ValueError as exc:
        raise ModelLoadError(f"{key}: {exc}") from exc
    config_file = folder / component / "config.json"
    convert = _mapping_function(type(model))
    if convert is None:
        raise ModelLoadError(
            f"{key}: diffusers cannot load {type(model).__name__} from a single file; use a Diffusers folder"
        )
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if set(checkpoint) == set(expected):  # already diffusers' names: from_single_file does not convert either
        converted = checkpoint
    else:
        try:
            converted = convert(checkpoint=dict(checkpoint), config=dict(model.config))
        except Exception as exc:  # noqa: BLE001 - a converter meeting names or sizes it does not expect
            raise ModelLoadError(
                f"{key}: {path} is not a {title} transformer checkpoint that diffusers' {type(model).__name__} "
                f"converter reads ({type(exc).__name__}: {exc}){_hint(checkpoint)}"
            ) from exc
    got = {name: tuple(t.shape) for name, t in converted.items()}
    ignored = [re.compile(p) for p in (model._keys_to_ignore_on_load_unexpected or [])]
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(n for n in got.keys() - expected.keys() if not any(p.search(n) for p in ignored))
    reshaped = sorted(n for n in expected.keys() & got.keys() if expected[n] != got[n])
    if not (missing or unexpected or reshaped):
        return
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} of the transformer's {len(expected)} weights are not in the file (e.g. {missing[0]})"
        )
    if unexpected:
        problems.append(f"the file holds {_count(unexpected)} the transformer lacks (e.g. {unexpected[0]})")
    if reshaped:
        name = reshaped[0]
        problems.append(
            f"{_count(reshaped)} of another shape (e.g. {name}: {list(got[name])} in the file, "
            f"{list(expected[name])} in the config)"
        )
    raise ModelLoadError(
        f"{key}: {path} does not fit the {title} transformer that {config_file} describes: "
        f"{'; '.join(problems)}. Use a {title} transformer checkpoint (the original / ComfyUI layout, or diffusers' "
        f"names) of the same arch and variant as model.extras_name_or_path{_hint(checkpoint)}"
    )


def _count(names: list[str]) -> str:
    return f"{len(names)} weight{'s' if len(names) != 1 else ''}"


def _hint(checkpoint: dict[str, torch.Tensor]) -> str:
    """What a file that is not a plain transformer checkpoint most likely is."""
    names = list(checkpoint)
    if any("lora" in n.lower() for n in names):
        return " (it holds LoRA weights: a LoRA goes in model.lora_path or network.pretrained_lora_path)"
    if any(n.endswith(("scale_weight", "scale_input", "weight_scale")) or n == "scaled_fp8" for n in names):
        return " (it is a scaled-fp8 export; use the bf16 / fp16 file and model.quantize for fp8)"
    return ""
