"""LoRA safetensors files in the ComfyUI/original-Wan layout and the diffusers/PEFT layout.

* `comfyui` (default): `diffusion_model.{original Wan name}.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  the layout ComfyUI and the original Wan code read. `.alpha` is always written (a 0-dim fp32 tensor) so the
  strength at load time equals the strength used in training; diffusers' Wan converter reads it with
  `.item()` and folds alpha/rank into the weights.
* `diffusers`: `transformer.{diffusers name}.lora_A.weight` / `.lora_B.weight`, plus the safetensors metadata
  entry `lora_adapter_metadata` (JSON LoraConfig kwargs prefixed `transformer.`: `r`, `lora_alpha`,
  `target_modules`, `rank_pattern`, `alpha_pattern`) - the entry `WanLoraLoaderMixin.load_lora_weights`
  passes to PEFT, so a file whose alpha != rank loads at the trained strength with the tensors unchanged.
* Loading also accepts kohya/musubi files (`lora_unet_blocks_0_self_attn_q.lora_down.weight`, layout "kohya").

Known limit of diffusers' converter (0.42): a ComfyUI-layout file that adapts modules outside the blocks
(`proj_out`, embedders, `patch_embedding`) is rejected by `load_lora_weights`; ComfyUI loads it, and
`cadence convert --to diffusers` gives diffusers a file it loads.

All metadata values are strings; every file carries `cadence_format_version`, `layout`, `rank`, `alpha`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cadence.atomic import atomic_write_with
from cadence.networks import keymap

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
LAYOUTS = ("comfyui", "diffusers")
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMFY_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
KOHYA_PREFIX = "lora_unet_"


@dataclass
class LoraTensors:
    down: torch.Tensor  # [rank, in] (Linear) or [rank, in, *kernel] (conv)
    up: torch.Tensor  # [out, rank] (Linear) or [out, rank, 1, ...] (conv)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class LoraFile:
    modules: dict[str, LoraTensors]
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "comfyui"


# ------------------------------------------------------------------------------------------------ save
def _summary(values: list[float | int]) -> str:
    """'4' when all modules agree, else the distinct values sorted, comma-separated ('4,8')."""
    distinct = sorted(set(values))
    return ",".join(_num(v) for v in distinct)


def _num(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _comfy_tensors(modules: dict[str, LoraTensors], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in modules.items():
        key = COMFY_PREFIX + keymap.to_original(name)
        out[f"{key}.lora_down.weight"] = t.down.detach().to("cpu", dtype).contiguous()
        out[f"{key}.lora_up.weight"] = t.up.detach().to("cpu", dtype).contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(t.alpha), dtype=torch.float32)
    return out


def _diffusers_tensors(modules: dict[str, LoraTensors], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in modules.items():
        out[f"{DIFFUSERS_PREFIX}{name}.lora_A.weight"] = t.down.detach().to("cpu", dtype).contiguous()
        out[f"{DIFFUSERS_PREFIX}{name}.lora_B.weight"] = t.up.detach().to("cpu", dtype).contiguous()
    return out


def adapter_config(modules: dict[str, LoraTensors]) -> dict[str, object]:
    """PEFT LoraConfig kwargs reproducing each module's rank and alpha (patterns only where they differ)."""
    r = Counter(t.rank for t in modules.values()).most_common(1)[0][0]
    alpha = Counter(float(t.alpha) for t in modules.values()).most_common(1)[0][0]
    rank_pattern = {_pattern(n): t.rank for n, t in modules.items() if t.rank != r}
    alpha_pattern = {_pattern(n): float(t.alpha) for n, t in modules.items() if float(t.alpha) != alpha}
    return {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(modules),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
    }


def _pattern(name: str) -> str:
    return name.replace(".", r"\.")


def save_lora_file(
    path: str | Path,
    modules: dict[str, LoraTensors],
    metadata: dict[str, str],
    layout: str,
    dtype: torch.dtype,
) -> None:
    """Write `modules` to `path` atomically in `layout` with weights cast to `dtype` (alpha stays fp32)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not modules:
        raise ValueError(f"refusing to write {path}: no LoRA modules")
    meta = {str(k): str(v) for k, v in metadata.items() if k not in (ADAPTER_METADATA_KEY, "format")}
    meta.update(
        cadence_format_version=FORMAT_VERSION,
        layout=layout,
        rank=_summary([t.rank for t in modules.values()]),
        alpha=_summary([float(t.alpha) for t in modules.values()]),
        format="pt",
    )
    if layout == "comfyui":
        tensors = _comfy_tensors(modules, dtype)
    else:
        tensors = _diffusers_tensors(modules, dtype)
        config = {f"{DIFFUSERS_PREFIX}{k}": v for k, v in adapter_config(modules).items()}
        meta[ADAPTER_METADATA_KEY] = json.dumps(config, sort_keys=True)
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


# ------------------------------------------------------------------------------------------------ load
def detect_layout(keys: list[str], path: str | Path = "<dict>") -> str:
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        return "comfyui"
    if any(k.startswith(DIFFUSERS_PREFIX) and ".lora_A." in k for k in keys):
        return "diffusers"
    if any(k.startswith(KOHYA_PREFIX) for k in keys):
        return "kohya"
    first = keys[0] if keys else "<no tensors>"
    raise ValueError(
        f"{path}: not a Wan LoRA file Cadence can read (first key {first!r}); expected keys starting with "
        f"'{COMFY_PREFIX}' (ComfyUI), '{DIFFUSERS_PREFIX}...lora_A' (diffusers) or '{KOHYA_PREFIX}' (kohya)"
    )


def _split(key: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return None


_DOWN = (".lora_down.weight", ".lora_A.weight")
_UP = (".lora_up.weight", ".lora_B.weight")


def _group(tensors: dict[str, torch.Tensor], path: Path, prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """{stem after prefix: {'down'|'up'|'alpha': tensor}}; unknown keys are an error naming file and key."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parts = _split(key, _DOWN) or _split(key, _UP) or _split(key, (".alpha",))
        if parts is None or not key.startswith(prefix):
            raise ValueError(f"{path}: unexpected key {key!r} (expected {prefix}<module>.lora_down/up/alpha)")
        stem, suffix = parts
        kind = "down" if suffix in _DOWN else "up" if suffix in _UP else "alpha"
        groups.setdefault(stem[len(prefix) :], {})[kind] = value
    return groups


def _to_modules(
    groups: dict[str, dict[str, torch.Tensor]], path: Path, rename, alphas
) -> dict[str, LoraTensors]:
    modules: dict[str, LoraTensors] = {}
    for stem, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ValueError(
                f"{path}: module {stem!r} lacks its {'up' if 'down' in parts else 'down'} weight"
            )
        try:
            name = rename(stem)
        except KeyError as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from exc
        rank = int(parts["down"].shape[0])
        alpha = float(parts["alpha"].item()) if "alpha" in parts else alphas(name, rank)
        modules[name] = LoraTensors(down=parts["down"], up=parts["up"], alpha=alpha)
    return modules


def _diffusers_alphas(meta: dict[str, str], path: Path):
    """alpha(name, rank) as PEFT resolves it from the file's adapter config, as a plain alpha over rank.

    `alpha_pattern` keys are regexes matched against the end of the module name (PEFT's `get_pattern_key`:
    the first key for which `(.*\\.)?(key)$` matches wins); `use_rslora` scales by alpha/sqrt(rank), stored
    here as alpha·sqrt(rank) so every layout and loader reads the same strength.
    """
    raw = meta.get(ADAPTER_METADATA_KEY)
    config = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in json.loads(raw).items()} if raw else {}
    if config.get("use_dora"):
        raise ValueError(
            f"{path}: a DoRA adapter (use_dora in its adapter config); Cadence reads plain LoRA only, and dropping "
            "the magnitude vectors would change what the file does"
        )
    patterns = [
        (re.compile(rf"(.*\.)?({key})$"), float(v)) for key, v in (config.get("alpha_pattern") or {}).items()
    ]
    default = config.get("lora_alpha")
    rslora = bool(config.get("use_rslora"))

    def alpha(name: str, rank: int) -> float:
        # diffusers without adapter metadata uses lora_alpha = r, i.e. scale 1
        value = next((v for pattern, v in patterns if pattern.match(name)), None)
        if value is None:
            value = float(default) if default is not None else float(rank)
        return value * math.sqrt(rank) if rslora else value

    return alpha


def load_lora_file(path: str | Path) -> LoraFile:
    """Read a LoRA file of any supported layout; tensors keep the file's dtype, names are diffusers names."""
    tensors, meta = read_safetensors(path)
    return parse_lora_tensors(tensors, meta, Path(path))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata) of a safetensors file; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ValueError(
            f"{path}: not a readable safetensors file ({exc}); it may be truncated: copy or download it again"
        ) from exc


def parse_lora_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> LoraFile:
    """The modules of LoRA tensors in any supported layout (`path` only names the source in errors)."""
    meta = dict(meta)
    layout = detect_layout(list(tensors), path)
    if layout == "comfyui":
        groups = _group(tensors, path, COMFY_PREFIX)
        modules = _to_modules(groups, path, keymap.to_diffusers, lambda _n, r: float(r))
    elif layout == "diffusers":
        groups = _group(tensors, path, DIFFUSERS_PREFIX)
        modules = _to_modules(groups, path, lambda s: s, _diffusers_alphas(meta, path))
    else:
        groups = _group(tensors, path, KOHYA_PREFIX)
        rename = lambda s: keymap.to_diffusers(keymap.kohya_to_original(s))  # noqa: E731
        modules = _to_modules(groups, path, rename, lambda _n, r: float(r))
    for key in ("format", ADAPTER_METADATA_KEY):
        meta.pop(key, None)
    return LoraFile(modules=modules, metadata=meta, layout=layout)
