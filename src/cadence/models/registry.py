"""Find a model (local folder or hub id), check it is complete and of the configured arch, then load it.

Everything cheap is checked before any weights are read: the folder exists, `model_index.json` says what
kind of Wan model it is, that kind matches `model.arch`, and every component the arch needs is on disk.
Hub ids are fetched with `huggingface_hub.snapshot_download` in two passes (configs first, weights only
after the arch check), so a wrong `model.arch` never triggers a multi-GB download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from cadence.models.base import ArchMismatchError, ModelAdapter, ModelLoadError

log = logging.getLogger(__name__)

ARCHS = ("wan21", "wan21_i2v", "wan22_14b", "wan22_14b_i2v", "wan22_5b")
TWO_EXPERT = ("wan22_14b", "wan22_14b_i2v")
DEFAULT_BOUNDARY = {"wan22_14b": 0.875, "wan22_14b_i2v": 0.9}
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")


def arch_geometry(arch: str) -> tuple[int, int, int]:
    """(spatial_multiple, temporal_multiple, native_fps) of `arch` without loading anything (buckets, UI)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return (32, 4, 24) if arch == "wan22_5b" else (16, 4, 16)


def required_components(arch: str) -> tuple[str, ...]:
    """Pipeline components Cadence loads for `arch` (sampling reuses them; nothing else is read)."""
    parts = ["tokenizer", "text_encoder", "vae", "scheduler", "transformer"]
    if arch in TWO_EXPERT:
        parts.append("transformer_2")
    if arch == "wan21_i2v":
        parts += ["image_encoder", "image_processor"]
    return tuple(parts)


def read_model_index(folder: Path) -> dict:
    path = folder / "model_index.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: model.name_or_path must point at a complete Diffusers Wan folder "
            "(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/). "
            "Download one with `hf download Wan-AI/Wan2.2-I2V-A14B-Diffusers --local-dir DIR`."
        )
    return read_json(path)


def read_json(path: Path) -> dict:
    """A model folder's JSON file; a broken one is a ModelLoadError naming the file, not a traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-download the model folder") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{path} holds {type(data).__name__}, not a JSON object; re-download the model folder"
        )
    return data


def _present(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _transformer_config(folder: Path, index: dict) -> dict:
    name = "transformer" if _present(index, "transformer") else "transformer_2"
    path = folder / name / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the folder has no transformer config; re-download it")
    return read_json(path)


def detect_arch(folder: str | Path) -> str:
    """Which Cadence arch a Diffusers Wan folder holds, from model_index.json and the transformer config."""
    folder = Path(folder)
    index = read_model_index(folder)
    if "Wan" not in str(index.get("_class_name", "")):
        raise ModelLoadError(
            f"{folder / 'model_index.json'}: _class_name is {index.get('_class_name')!r}, not a Wan pipeline"
        )
    in_channels = int(_transformer_config(folder, index).get("in_channels", 16))
    if in_channels == 48 or index.get("expand_timesteps"):
        return "wan22_5b"
    i2v = in_channels == 36
    if _present(index, "transformer_2"):
        return "wan22_14b_i2v" if i2v else "wan22_14b"
    return "wan21_i2v" if i2v else "wan21"


def resolve_boundary(arch: str, index: dict, override: float | None) -> float | None:
    """Expert boundary: config override, else the folder's `boundary_ratio`, else Wan's published value."""
    if arch not in TWO_EXPERT:
        return None
    if override is not None:
        return float(override)
    if index.get("boundary_ratio") is not None:
        return float(index["boundary_ratio"])
    return DEFAULT_BOUNDARY[arch]


def _component_problem(folder: Path, name: str) -> str | None:
    """None when component `name` looks complete, else a sentence naming what is missing."""
    sub = folder / name
    if not sub.is_dir():
        return f"{sub}/ (folder missing)"
    marker = {
        "tokenizer": ("tokenizer.json", "tokenizer_config.json", "spiece.model"),
        "scheduler": ("scheduler_config.json",),
        "image_processor": ("preprocessor_config.json",),
    }.get(name)
    if marker is not None:
        return None if any((sub / m).is_file() for m in marker) else f"{sub / marker[0]}"
    if not (sub / "config.json").is_file():
        return f"{sub / 'config.json'}"
    read_json(sub / "config.json")  # a broken config.json names itself now, not deep inside from_pretrained
    weights = [p for p in sub.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        return f"{sub}/*.safetensors (no weights file)"
    for index_file in (p for p in weights if p.name.endswith(".index.json")):
        shards = set(read_json(index_file).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (sub / s).is_file())
        if missing:
            return f"{sub / missing[0]} (shard listed in {index_file.name}; {len(missing)} missing)"
    return None


def check_components(folder: Path, arch: str) -> None:
    """Raise one ModelLoadError listing every missing file the arch needs."""
    problems = [p for name in required_components(arch) if (p := _component_problem(folder, name))]
    if problems:
        listing = "\n  - ".join(problems)
        raise ModelLoadError(
            f"model folder {folder} is incomplete for arch {arch}; missing:\n  - {listing}\n"
            "It must be a complete Diffusers Wan folder. Re-download the missing parts "
            "(e.g. `hf download REPO_ID --local-dir DIR`) or point model.name_or_path at a complete copy."
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", "/", "\\")) or name.count("/") != 1 or "\\" in name or ":" in name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = _hub_offline()
    rev = f" (revision {revision})" if revision else ""
    try:
        got = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"model.name_or_path {repo_id!r}{rev} is not a local folder and is not in the Hugging Face cache, "
            f"and the hub is {'offline (HF_HUB_OFFLINE=1)' if offline else 'unreachable'}. Download it first "
            f"(`hf download {repo_id} --local-dir DIR`) and set model.name_or_path to DIR."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"could not fetch model {repo_id!r}{rev} from the hub: {exc}") from exc
    return Path(got)


def resolve_model_folder(name_or_path: str, revision: str | None = None) -> tuple[Path, bool]:
    """(folder, from_hub). A hub id gets only its configs here; weights come after the arch check."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model.name_or_path {path} is a file; it must be a Diffusers Wan folder")
        return path, False
    if _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"model folder {path} does not exist; set model.name_or_path to a Diffusers Wan folder "
            "or a hub id such as Wan-AI/Wan2.2-I2V-A14B-Diffusers"
        )
    return _snapshot(name_or_path, revision, ["model_index.json", "*/config.json"]), True


def _fetch_weights(repo_id: str, revision: str | None, arch: str) -> Path:
    patterns = ["model_index.json"] + [f"{name}/*" for name in required_components(arch)]
    return _snapshot(repo_id, revision, patterns)


def check_model(name_or_path: str, arch: str, revision: str | None = None) -> Path:
    """Cheap pre-flight (no weights read): folder exists, arch matches, components present."""
    folder, from_hub = resolve_model_folder(name_or_path, revision)
    detected = detect_arch(folder)
    if detected != arch:
        raise ArchMismatchError(
            f"model.arch is {arch!r} but {name_or_path} holds a {detected!r} model "
            f"(detected from {folder / 'model_index.json'} and transformer/config.json). "
            f"Set model.arch: {detected} or point model.name_or_path at a {arch} folder."
        )
    if from_hub:
        folder = _fetch_weights(name_or_path, revision, arch)
    check_components(folder, arch)
    return folder


ENCODER_PARTS = ("model_index.json", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor")


def encoder_digest(folder: Path) -> str:
    """Short digest of what produces cached latents and text embeddings (VAE, text/image encoders): names,
    sizes and modification times of their files. A VAE swapped inside the same folder, or another model at
    the same path, gets new cache entries instead of another model's stale ones."""
    folder = Path(folder)
    lines = []
    for part in ENCODER_PARTS:
        root = folder / part
        files = sorted(root.rglob("*")) if root.is_dir() else [root] if root.is_file() else []
        for path in files:
            if path.is_file():
                stat = path.stat()
                lines.append(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def load_model_adapter(model_cfg, device: torch.device, dtype: torch.dtype) -> ModelAdapter:
    """Load the model named by `model_cfg` (cadence.config.schema.ModelConfig) behind a ModelAdapter."""
    from cadence.models.wan import WanAdapter

    folder = check_model(model_cfg.name_or_path, model_cfg.arch, model_cfg.revision)
    kwargs = model_cfg.model_kwargs
    boundary = resolve_boundary(model_cfg.arch, read_model_index(folder), kwargs.boundary_ratio)
    model_id = model_cfg.name_or_path + (f"@{model_cfg.revision}" if model_cfg.revision else "")
    model_id += f"#{encoder_digest(folder)}"
    trained = ("main",)
    if model_cfg.arch in TWO_EXPERT:
        trained = tuple(
            name
            for name, on in (("high_noise", kwargs.train_high_noise), ("low_noise", kwargs.train_low_noise))
            if on
        )
        if not trained:
            raise ModelLoadError(
                "model.model_kwargs.train_high_noise and train_low_noise are both false: nothing to train"
            )
    return WanAdapter.load(
        folder,
        model_cfg.arch,
        device=torch.device(device),
        dtype=dtype,
        boundary=boundary,
        model_id=model_id,
        low_vram=model_cfg.low_vram,
        trained_experts=trained,
    )
