"""Loading one pipeline component from a Diffusers folder, the same way for every family.

`load_component` calls the diffusers or transformers class's own `from_pretrained` (local files only), or for a
transformer given as a single-file checkpoint its `from_single_file`, and turns any library error into one
`ModelLoadError` naming the folder or file; `frozen` puts a loaded module in eval mode
without gradients on its device; `scheduler_class` reads the scheduler class a folder names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cadence.models.base import ModelLoadError


def load_component(kind: str, folder: Path, name: str, single_file: Path | None = None, **kwargs):
    """from_pretrained of one component, turning library errors into a message naming the folder. With
    `single_file` (a transformer checkpoint, see `single_file.py`): the class's `from_single_file` of that file,
    with `folder/name/config.json` as its config."""
    import diffusers
    import transformers

    cls = getattr(diffusers, kind, None) or getattr(transformers, kind)
    path = folder / name
    try:
        if single_file is not None:
            return cls.from_single_file(
                str(single_file), config=str(folder), subfolder=name, local_files_only=True, **kwargs
            )
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one user-facing message
        source = path if single_file is None else f"{single_file} (config {path / 'config.json'})"
        raise ModelLoadError(f"could not load {name} from {source} with {kind}: {exc}") from exc


def frozen(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval().to(device)


def scheduler_class(folder: Path, default: str) -> str:
    """The `_class_name` of the folder's scheduler config (`default` when it names none)."""
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return str(cfg.get("_class_name", default))
