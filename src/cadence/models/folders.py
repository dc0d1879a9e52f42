"""Diffusers model folders, whatever the family: find one (local folder or hub id), read its JSON, check that
the components an arch needs are complete, and digest what produces cached latents and text embeddings.

Everything here is cheap (no weights read). Hub ids are fetched with `huggingface_hub.snapshot_download` in
two passes (configs first, weights only after the arch check), so a wrong `model.arch` never triggers a
multi-GB download.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cadence.models.base import ModelLoadError

WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
MARKERS = {  # components without a config.json: the file that shows they are there
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json"),
    "tokenizer_2": ("tokenizer.json", "tokenizer_config.json", "spiece.model"),
    "scheduler": ("scheduler_config.json",),
    "image_processor": ("preprocessor_config.json",),
}


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


def read_model_index(folder: Path, key: str = "model.name_or_path") -> dict:
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{path} not found: {key} must point at a complete Diffusers model folder "
            "(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/). "
            "Download one with e.g. `hf download Wan-AI/Wan2.2-I2V-A14B-Diffusers --local-dir DIR`."
        )
    return read_json(path)


def present(index: dict, name: str) -> bool:
    """Whether model_index.json lists component `name` (diffusers writes [null, null] for an absent one)."""
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def component_config(folder: Path, name: str) -> dict:
    path = Path(folder) / name / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the folder has no {name} config; re-download it")
    return read_json(path)


def component_problem(folder: Path, name: str, config_only: bool = False) -> str | None:
    """None when component `name` looks complete, else a sentence naming what is missing. `config_only`: only its
    config.json is needed (a transformer whose weights come from a single-file checkpoint)."""
    sub = folder / name
    if not sub.is_dir():
        return f"{sub}/ (folder missing)"
    marker = MARKERS.get(name)
    if marker is not None:
        return None if any((sub / m).is_file() for m in marker) else f"{sub / marker[0]}"
    if not (sub / "config.json").is_file():
        return f"{sub / 'config.json'}"
    read_json(sub / "config.json")  # a broken config.json names itself now, not deep inside from_pretrained
    if config_only:
        return None
    weights = [p for p in sub.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        return f"{sub}/*.safetensors (no weights file)"
    for index_file in (p for p in weights if p.name.endswith(".index.json")):
        shards = set(read_json(index_file).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (sub / s).is_file())
        if missing:
            return f"{sub / missing[0]} (shard listed in {index_file.name}; {len(missing)} missing)"
    return None


def check_components(
    folder: Path,
    arch: str,
    components: tuple[str, ...],
    title: str,
    key: str = "model.name_or_path",
    config_only: tuple[str, ...] = (),
) -> None:
    """Raise one ModelLoadError listing every missing file of `components` (of those in `config_only`, only their
    config.json is needed)."""
    problems = [p for name in components if (p := component_problem(folder, name, name in config_only))]
    if problems:
        listing = "\n  - ".join(problems)
        raise ModelLoadError(
            f"model folder {folder} is incomplete for arch {arch}; missing:\n  - {listing}\n"
            f"It must be a complete Diffusers {title} folder. Re-download the missing parts "
            f"(e.g. `hf download REPO_ID --local-dir DIR`) or point {key} at a complete copy."
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "~", "/", "\\")) or name.count("/") != 1 or "\\" in name or ":" in name


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def snapshot(
    repo_id: str, revision: str | None, patterns: list[str], key: str = "model.name_or_path"
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline()
    rev = f" (revision {revision})" if revision else ""
    try:
        got = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline)
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{key} {repo_id!r}{rev} is not a local folder and is not in the Hugging Face cache, "
            f"and the hub is {'offline (HF_HUB_OFFLINE=1)' if offline else 'unreachable'}. Download it first "
            f"(`hf download {repo_id} --local-dir DIR`) and set {key} to DIR."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"could not fetch model {repo_id!r}{rev} from the hub: {exc}") from exc
    return Path(got)


def resolve_model_folder(
    name_or_path: str, revision: str | None = None, key: str = "model.name_or_path"
) -> tuple[Path, bool]:
    """(folder, from_hub). A hub id gets only its configs here; weights come after the arch check. `key` is the
    config key that names the folder (model.extras_name_or_path beside a single-file checkpoint)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{key} {path} is a file; it must be a Diffusers model folder (model_index.json)"
            )
        return path, False
    if _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"model folder {path} does not exist; set {key} to a Diffusers model folder "
            "or a hub id such as Wan-AI/Wan2.2-I2V-A14B-Diffusers or black-forest-labs/FLUX.1-dev"
        )
    return snapshot(name_or_path, revision, ["model_index.json", "*/config.json"], key), True


def encoder_digest(folder: Path, parts: tuple[str, ...]) -> str:
    """Short digest of what produces cached latents and text embeddings (VAE, text/image encoders): names,
    sizes and modification times of their files. A VAE swapped inside the same folder, or another model at
    the same path, gets new cache entries instead of another model's stale ones."""
    folder = Path(folder)
    lines = []
    for part in parts:
        root = folder / part
        files = sorted(root.rglob("*")) if root.is_dir() else [root] if root.is_file() else []
        for path in files:
            if path.is_file():
                stat = path.stat()
                lines.append(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]
