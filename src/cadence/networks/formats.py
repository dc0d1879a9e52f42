"""Adapter safetensors files (LoRA, LoCon, LoKr, LoHa, DoRA) in the ComfyUI/original and diffusers layouts.

Original module names are the model family's (`cadence.networks.keymap` finds its `KeyMap`: Wan's
`blocks.0.self_attn.q`, FLUX's fused `double_blocks.0.img_attn.qkv`, ...); the Wan names below are examples.

* `comfyui` (default): `diffusion_model.{original Wan name}.{key}` with the LyCORIS/ComfyUI keys of the
  module's algorithm (`lora_down.weight` / `lora_up.weight`, `lokr_w1` / `lokr_w2[_a|_b]`, `hada_w1_a` ...,
  `dora_scale`) and `.alpha`, the layout ComfyUI and the original Wan code read. `.alpha` is always written
  (a 0-dim fp32 tensor) where the algorithm has a rank, so the strength at load time equals the strength used
  in training; diffusers' Wan converter reads it with `.item()` and folds alpha/rank into the weights. DoRA
  magnitudes stay fp32 too: they rescale whole rows of W, so fp16 rounding would move W by more than most
  trained deltas.
* `diffusers` (LoRA and output-axis DoRA only): `transformer.{diffusers name}.lora_A.weight` /
  `.lora_B.weight` (`.lora_magnitude_vector` for DoRA), plus the safetensors metadata entry
  `lora_adapter_metadata` (JSON LoraConfig kwargs prefixed `transformer.`: `r`, `lora_alpha`,
  `target_modules`, `rank_pattern`, `alpha_pattern`, `use_dora`) - the entry
  `WanLoraLoaderMixin.load_lora_weights` passes to PEFT, so a file whose alpha != rank loads at the trained
  strength with the tensors unchanged. PEFT has no LoKr/LoHa loader in diffusers' LoRA path.
* `kohya`: the same keys as `comfyui` under `lora_unet_{original name with '.' -> '_'}` (kohya / musubi-tuner
  naming, e.g. `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.alpha`): the only names musubi-tuner's
  `--lora_weight` merge matches; ComfyUI reads them too. Which tool loads which layout, type and module set:
  `cadence.networks.loaders`.

Known limit of diffusers' converter (0.42): a ComfyUI-layout file that adapts modules outside the blocks
(`proj_out`, embedders, `patch_embedding`) is rejected by `load_lora_weights`; ComfyUI loads it, and
`cadence convert --to diffusers` gives diffusers a file it loads.

All metadata values are strings; every file carries `cadence_format_version`, `layout`, `algo`, `rank`,
`alpha` (and `dora` with DoRA's axis).
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

from cadence.atomic import atomic_write_with
from cadence.networks import keymap
from cadence.networks.tensors import ALGO_KEYS, DORA_KEY, IDENTIFYING_KEY, UNSUPPORTED_KEYS, AdapterTensors
from cadence.stable_safetensors import stable_bytes

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
LAYOUTS = ("comfyui", "diffusers", "kohya")
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMFY_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
KOHYA_PREFIX = "lora_unet_"


def LoraTensors(down: torch.Tensor, up: torch.Tensor, alpha: float) -> AdapterTensors:  # noqa: N802
    """A LoRA module's tensors (down [rank, in(, k...)], up [out, rank(, 1...)]) as `AdapterTensors`."""
    return AdapterTensors("lora", {"lora_down.weight": down, "lora_up.weight": up}, float(alpha))


@dataclass
class LoraFile:
    modules: dict[str, AdapterTensors]
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "comfyui"

    @property
    def algos(self) -> list[str]:
        return sorted({t.algo for t in self.modules.values()})


# ------------------------------------------------------------------------------------------------ save
def _summary(values: list[float | int]) -> str:
    """'4' when all modules agree, else the distinct values sorted, comma-separated ('4,8')."""
    distinct = sorted(set(values))
    return ",".join(_num(v) for v in distinct)


def _num(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _stored(key: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Factors in the save dtype; DoRA magnitudes in fp32 (see the module docstring)."""
    return value.detach().to("cpu", torch.float32 if key == DORA_KEY else dtype).contiguous()


def _prefixed_tensors(
    modules: dict[str, AdapterTensors], dtype: torch.dtype, kohya: bool, names: keymap.KeyMap
) -> dict[str, torch.Tensor]:
    """The LyCORIS keys under `diffusion_model.<original name>` (ComfyUI) or `lora_unet_<original_name>`
    (kohya / musubi-tuner: the original name with '.' -> '_'); `names` is the family's key map."""
    out: dict[str, torch.Tensor] = {}
    for original, t in names.export(modules).items():
        key = KOHYA_PREFIX + original.replace(".", "_") if kohya else COMFY_PREFIX + original
        for suffix, value in t.tensors.items():
            out[f"{key}.{suffix}"] = _stored(suffix, value, dtype)
        if t.alpha is not None:
            out[f"{key}.alpha"] = torch.tensor(float(t.alpha), dtype=torch.float32)
    return out


def layout_problems(
    modules: dict[str, AdapterTensors], layout: str, names: keymap.KeyMap | None = None
) -> list[str]:
    """Why `modules` cannot be written in `layout` (empty when they can), each with what to do instead;
    `names`: the family's key map (found from the module names when not given)."""
    if layout != "diffusers":
        return (names or keymap.for_names(modules)).export_problems(modules)
    problems = []
    others = sorted({t.algo for t in modules.values()} - {"lora"})
    if others:
        problems.append(
            f"{', '.join(others)} adapters have no diffusers layout (diffusers' load_lora_weights reads LoRA "
            "only); save them in the comfyui layout, which ComfyUI loads"
        )
    if any(t.wd_on_output is False for t in modules.values()):
        problems.append(
            "DoRA with the magnitude per input column (network_kwargs.wd_on_output: false) has no diffusers "
            "layout: PEFT's DoRA normalises per output row; use the comfyui layout, or train with wd_on_output: true"
        )
    if any(t.dora_scale is not None and t.is_conv for t in modules.values()):
        problems.append("DoRA on a Conv layer has no diffusers layout here; use the comfyui layout")
    return problems


def _diffusers_tensors(modules: dict[str, AdapterTensors], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in modules.items():
        out[f"{DIFFUSERS_PREFIX}{name}.lora_A.weight"] = _stored("", t.down, dtype)
        out[f"{DIFFUSERS_PREFIX}{name}.lora_B.weight"] = _stored("", t.up, dtype)
        if t.dora_scale is not None:
            magnitude = t.dora_scale.reshape(-1)
            out[f"{DIFFUSERS_PREFIX}{name}.lora_magnitude_vector"] = _stored(DORA_KEY, magnitude, dtype)
    return out


def adapter_config(modules: dict[str, AdapterTensors]) -> dict[str, object]:
    """PEFT LoraConfig kwargs reproducing each module's rank and alpha (patterns only where they differ)."""
    r = Counter(t.rank for t in modules.values()).most_common(1)[0][0]
    alpha = Counter(float(t.alpha) for t in modules.values()).most_common(1)[0][0]
    rank_pattern = {_pattern(n): t.rank for n, t in modules.items() if t.rank != r}
    alpha_pattern = {_pattern(n): float(t.alpha) for n, t in modules.items() if float(t.alpha) != alpha}
    config: dict[str, object] = {
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(modules),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
    }
    if any(t.dora_scale is not None for t in modules.values()):
        config["use_dora"] = True
    return config


def _pattern(name: str) -> str:
    return name.replace(".", r"\.")


def summary_metadata(modules: dict[str, AdapterTensors]) -> dict[str, str]:
    """algo, rank ('full' for a rankless LoKr), alpha and DoRA axis over all modules, as metadata strings."""
    ranks = [t.rank for t in modules.values()]
    meta = {
        "algo": ",".join(sorted({t.algo for t in modules.values()})),
        "rank": ",".join(x for x in (_summary([r for r in ranks if r]), "full" * (None in ranks)) if x),
        "alpha": _summary([float(t.alpha) for t in modules.values() if t.alpha is not None]),
    }
    axes = {t.wd_on_output for t in modules.values() if t.wd_on_output is not None}
    if axes:
        meta["dora"] = ",".join(sorted("output" if a else "input" for a in axes))
    return meta


def save_lora_file(
    path: str | Path,
    modules: dict[str, AdapterTensors],
    metadata: dict[str, str],
    layout: str,
    dtype: torch.dtype,
    names: keymap.KeyMap | None = None,
) -> None:
    """Write `modules` to `path` atomically in `layout` with weights cast to `dtype` (alpha and DoRA
    magnitudes stay fp32). `names`: the model family's key map; by default the one of `metadata["arch"]`,
    else the family whose map knows every module name."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not modules:
        raise ValueError(f"refusing to write {path}: no LoRA modules")
    names = names or keymap.for_arch(metadata.get("arch")) or keymap.for_names(modules)
    problems = layout_problems(modules, layout, names)
    if problems:
        raise ValueError(f"cannot write {path} in the {layout} layout: " + "; ".join(problems))
    meta = {
        str(k): str(v)
        for k, v in metadata.items()
        if k not in (ADAPTER_METADATA_KEY, "format", "algo", "rank", "alpha", "dora")
    }
    meta.update(
        cadence_format_version=FORMAT_VERSION, layout=layout, **summary_metadata(modules), format="pt"
    )
    if layout in ("comfyui", "kohya"):
        tensors = _prefixed_tensors(modules, dtype, layout == "kohya", names)
    else:
        tensors = _diffusers_tensors(modules, dtype)
        config = {f"{DIFFUSERS_PREFIX}{k}": v for k, v in adapter_config(modules).items()}
        meta[ADAPTER_METADATA_KEY] = json.dumps(config, sort_keys=True)
    # sorted metadata keys: identical runs write byte-identical files (sha256-checkable resume)
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(stable_bytes(tensors, meta)))


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
        f"{path}: not a LoRA file Cadence can read (first key {first!r}); expected keys starting with "
        f"'{COMFY_PREFIX}' (ComfyUI), '{DIFFUSERS_PREFIX}...lora_A' (diffusers) or '{KOHYA_PREFIX}' (kohya)"
    )


# file key suffix -> the AdapterTensors key it is stored under (PEFT spellings map to LyCORIS's)
_SUFFIXES: dict[str, str] = {
    **{k: k for keys in ALGO_KEYS.values() for k in keys},
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    DORA_KEY: DORA_KEY,
    "lora_magnitude_vector": DORA_KEY,
    "alpha": "alpha",
}


def _split(key: str) -> tuple[str, str] | None:
    for suffix in sorted((*_SUFFIXES, *UNSUPPORTED_KEYS), key=len, reverse=True):
        if key.endswith(f".{suffix}"):
            return key[: -len(suffix) - 1], suffix
    return None


def _group(tensors: dict[str, torch.Tensor], path: Path, prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """{stem after prefix: {normalized suffix: tensor}}; unknown keys are an error naming file and key."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parts = _split(key)
        if parts is None or not key.startswith(prefix):
            raise ValueError(
                f"{path}: unexpected key {key!r} (expected {prefix}<module>.<LoRA/LoKr/LoHa key or alpha>)"
            )
        stem, suffix = parts
        if suffix in UNSUPPORTED_KEYS:
            raise ValueError(
                f"{path}: key {key!r} belongs to a LyCORIS variant Cadence does not read (Tucker decomposition "
                "or a LoKr with both halves factorized)"
            )
        groups.setdefault(stem[len(prefix) :], {})[_SUFFIXES[suffix]] = value
    return groups


def _module_algo(parts: dict[str, torch.Tensor], stem: str, path: Path) -> str:
    algos = [algo for algo, key in IDENTIFYING_KEY.items() if key in parts]
    if len(algos) != 1:
        found = sorted(k for k in parts if k not in ("alpha", DORA_KEY))
        raise ValueError(
            f"{path}: module {stem!r} has keys {found}; expected one complete LoRA (lora_down/up), LoKr "
            "(lokr_w1 + lokr_w2 or lokr_w2_a/b) or LoHa (hada_w1_a/b, hada_w2_a/b) set"
        )
    algo = algos[0]
    needed = {"lora": ALGO_KEYS["lora"], "loha": ALGO_KEYS["loha"]}.get(algo)
    if algo == "lokr":
        needed = ("lokr_w1", "lokr_w2") if "lokr_w2" in parts else ("lokr_w1", "lokr_w2_a", "lokr_w2_b")
    missing = [k for k in needed if k not in parts]
    extra = [k for k in parts if k not in (*needed, "alpha", DORA_KEY)]
    if missing or extra:
        what = f"lacks {missing}" if missing else f"mixes in {extra}"
        if algo == "lora" and missing:
            what = f"lacks its {'up' if 'lora_down.weight' in parts else 'down'} weight"
        raise ValueError(f"{path}: {algo} module {stem!r} {what}")
    return algo


def _to_modules(
    groups: dict[str, dict[str, torch.Tensor]], path: Path, rename, alphas
) -> dict[str, AdapterTensors]:
    """`alphas(name, rank)`: the alpha a file without `.alpha` means (the loader's rule for its layout)."""
    modules: dict[str, AdapterTensors] = {}
    for stem, parts in groups.items():
        algo = _module_algo(parts, stem, path)
        try:
            name = rename(stem)
        except KeyError as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from exc
        tensors = {k: v for k, v in parts.items() if k != "alpha"}
        t = AdapterTensors(algo, tensors, None)
        if algo == "lora" and DORA_KEY in tensors and tensors[DORA_KEY].dim() == 1:
            # PEFT's magnitude vector: one norm per output row, i.e. LyCORIS's [out, 1] dora_scale
            ones = [1] * (tensors["lora_down.weight"].dim() - 1)
            tensors[DORA_KEY] = tensors[DORA_KEY].reshape(-1, *ones)
        if t.rank is not None:
            t.alpha = float(parts["alpha"].item()) if "alpha" in parts else alphas(name, t.rank)
        modules[name] = t
    return modules


def _restored(
    originals: dict[str, AdapterTensors], layout: str, path: Path, names: keymap.KeyMap | None
) -> dict[str, AdapterTensors]:
    """A ComfyUI/kohya file's modules under diffusers names, through the family's key map (tried in registry
    order when the file does not say its arch); an unknown name is an error naming the file."""
    from cadence.models.registry import families

    candidates = [names] if names is not None else [f.keymap for f in families()]
    error: KeyError | None = None
    for names in candidates:
        try:
            if layout == "kohya":
                return names.restore({names.kohya_to_original(s): t for s, t in originals.items()})
            return names.restore(originals)
        except KeyError as exc:
            error = error or exc
    raise ValueError(f"{path}: {error.args[0] if error and error.args else error}")


def _diffusers_alphas(meta: dict[str, str], path: Path):
    """alpha(name, rank) as PEFT resolves it from the file's adapter config, as a plain alpha over rank.

    `alpha_pattern` keys are regexes matched against the end of the module name (PEFT's `get_pattern_key`:
    the first key for which `(.*\\.)?(key)$` matches wins); `use_rslora` scales by alpha/sqrt(rank), stored
    here as alpha·sqrt(rank) so every layout and loader reads the same strength.
    """
    raw = meta.get(ADAPTER_METADATA_KEY)
    config = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in json.loads(raw).items()} if raw else {}
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


def _check_peft_dora(meta: dict[str, str], modules: dict[str, AdapterTensors], path: Path) -> None:
    """A PEFT DoRA file must hold every magnitude vector: without them it would load as plain LoRA."""
    raw = meta.get(ADAPTER_METADATA_KEY)
    config = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in json.loads(raw).items()} if raw else {}
    lacking = sorted(n for n, t in modules.items() if t.dora_scale is None)
    if config.get("use_dora") and lacking:
        raise ValueError(
            f"{path}: a DoRA adapter (use_dora in its adapter config) without lora_magnitude_vector for "
            f"{lacking[:3]}; reading it as plain LoRA would change what the file does"
        )


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


def parse_lora_tensors(
    tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path, names: keymap.KeyMap | None = None
) -> LoraFile:
    """The modules of LoRA tensors in any supported layout (`path` only names the source in errors).
    `names`: the model family's key map for original names; by default the one of the file's `arch`
    metadata, else the first family that reads every name."""
    meta = dict(meta)
    layout = detect_layout(list(tensors), path)
    names = names or keymap.for_arch(meta.get("arch"))
    if layout == "diffusers":
        groups = _group(tensors, path, DIFFUSERS_PREFIX)
        modules = _to_modules(groups, path, lambda s: s, _diffusers_alphas(meta, path))
        _check_peft_dora(meta, modules, path)
    else:
        prefix = COMFY_PREFIX if layout == "comfyui" else KOHYA_PREFIX
        groups = _group(tensors, path, prefix)
        originals = _to_modules(groups, path, lambda s: s, lambda _n, r: float(r))
        modules = _restored(originals, layout, path, names)
    for key in ("format", ADAPTER_METADATA_KEY):
        meta.pop(key, None)
    return LoraFile(modules=modules, metadata=meta, layout=layout)
