"""Which Wan tool loads an adapter file at the trained strength, by each tool's own key rules (other families
give their own rules: `cadence.models.image_loaders`).

Read from the tools' loader code (facts, re-stated here; tests re-implement the rules and run diffusers'
real loader against these verdicts):

* ComfyUI (`comfy/lora.py`, `comfy/weight_adapter/*`): a base weight `diffusion_model.<k>.weight` takes the
  file prefixes `diffusion_model.<k>` and `lora_unet_<k with . -> _>`; LoRA, LoHa, LoKr and `dora_scale` keys
  with `.alpha` (scale alpha/rank, no alpha -> 1). No `transformer.<diffusers name>` keys for Wan, so the
  diffusers layout does not load. An output-axis `dora_scale` is normalised by the base weight's row norms
  instead of the adapted weight's, so such a DoRA file loads slightly off.
* diffusers (`WanLoraLoaderMixin.load_lora_weights`, 0.42): `diffusion_model.` files go through
  `_convert_non_diffusers_wan_lora_to_diffusers`, which reads LoRA down/up pairs of the blocks and folds
  their `.alpha`, but leaves the `.alpha` of modules outside the blocks (and `patch_embedding`, LoKr, LoHa,
  `dora_scale` keys) unconverted and raises; `lora_unet_` files go through `_convert_musubi_wan_lora_to_diffusers`,
  which needs every block Linear of blocks 0..N-1 and nothing else; `transformer.` files (the diffusers layout)
  go to PEFT with `lora_adapter_metadata`, which loads LoRA (and output-axis DoRA) on any Linear or Conv.
* musubi-tuner (`--lora_weight` / `--lora_weight_high_noise`, `utils/lora_utils.py`): merges into each DiT
  weight `<k>.weight` the keys `lora_unet_<k with . -> _>` only (LoRA `lora_down/lora_up/alpha`, LoHa
  `hada_*`, LoKr `lokr_*`); Linear and Conv2d only (a Conv3d such as `patch_embedding` fails), no DoRA
  (`dora_scale` stays unused). Unmatched keys are only warned about, so a file in another layout merges
  nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cadence.networks.tensors import AdapterTensors

TOOLS = ("ComfyUI", "diffusers", "musubi-tuner")
# the block Linears diffusers' musubi converter pops for every block (diffusers names)
_BLOCK_PARTS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ffn.net.0.proj",
    "ffn.net.2",
)
_IMAGE_PARTS = ("attn2.add_k_proj", "attn2.add_v_proj")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class FileShape:
    """What decides loadability: the layout, the algorithm(s), DoRA's axis, and the adapted modules."""

    layout: str
    algos: frozenset[str]
    dora: str | None  # "input" | "output" | None
    modules: Mapping[str, bool]  # diffusers module name -> is a Conv layer


@dataclass(frozen=True)
class Verdict:
    tool: str
    loads: bool  # loads at the trained strength
    reason: str = ""  # why not (or a caveat when it loads)
    fix: str = ""  # what to do instead


def shape_of(modules: Mapping[str, AdapterTensors], layout: str) -> FileShape:
    axes = {t.wd_on_output for t in modules.values() if t.dora_scale is not None}
    dora = None if not axes else "output" if True in axes else "input"
    return FileShape(
        layout, frozenset(t.algo for t in modules.values()), dora, {n: t.is_conv for n, t in modules.items()}
    )


def outside_blocks(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if not _BLOCK.match(n))


def _full_blocks(names: Iterable[str]) -> str | None:
    """None when `names` are exactly every block Linear of blocks 0..N-1 (what diffusers' musubi converter
    pops), else the first thing that breaks it."""
    names = set(names)
    outside = outside_blocks(names)
    if outside:
        return f"it adapts {outside[0]}, outside the blocks"
    parts: dict[int, set[str]] = {}
    for name in names:
        match = _BLOCK.match(name)
        parts.setdefault(int(match.group(1)), set()).add(match.group(2))
    need = set(_BLOCK_PARTS) | (
        set(_IMAGE_PARTS) if any(_IMAGE_PARTS[0] in p for p in parts.values()) else set()
    )
    for index in range(len(parts)):
        missing = sorted(need - parts.get(index, set()))
        if missing:
            return f"block {index} lacks {missing[0]} (it needs every block Linear of blocks 0..{len(parts) - 1})"
    extra = sorted({p for s in parts.values() for p in s} - need)
    return f"it adapts {extra[0]}, which that converter does not read" if extra else None


def comfyui(shape: FileShape) -> Verdict:
    if shape.layout == "diffusers":
        return Verdict(
            "ComfyUI",
            False,
            "ComfyUI maps no transformer.<diffusers name> keys for Wan and ignores lora_adapter_metadata",
            "cadence convert FILE OUT --to comfyui",
        )
    if shape.dora == "output":
        return Verdict(
            "ComfyUI",
            False,
            "loads, but ComfyUI normalises an output-axis dora_scale by the base weight's norm, not the adapted "
            "weight's, so the strength is slightly off",
            "train DoRA with network_kwargs.wd_on_output: false (the default) for ComfyUI",
        )
    return Verdict("ComfyUI", True)


def diffusers(shape: FileShape) -> Verdict:
    other = sorted(shape.algos - {"lora"})
    if other:
        return Verdict(
            "diffusers",
            False,
            f"load_lora_weights reads LoRA only, not {', '.join(other)}",
            "load it in ComfyUI",
        )
    if shape.dora is not None and not (shape.layout == "diffusers" and shape.dora == "output"):
        return Verdict(
            "diffusers",
            False,
            "diffusers loads DoRA only through PEFT (the diffusers layout), whose magnitude is per output row",
            "train with network_kwargs.wd_on_output: true and save.format: diffusers (or cadence convert --to "
            "diffusers)",
        )
    if shape.layout == "diffusers":
        return Verdict("diffusers", True)
    if shape.layout == "comfyui":
        outside = outside_blocks(shape.modules)
        if outside:
            return Verdict(
                "diffusers",
                False,
                f"its Wan converter does not convert {outside[0]} (modules outside the blocks keep their .alpha "
                "or are unknown to it) and raises",
                "save.format: diffusers, or cadence convert FILE OUT --to diffusers",
            )
        return Verdict("diffusers", True)
    problem = _full_blocks(shape.modules)
    if problem:
        return Verdict(
            "diffusers",
            False,
            f"its lora_unet_ converter raises: {problem}",
            "cadence convert FILE OUT --to comfyui (block modules) or --to diffusers",
        )
    return Verdict("diffusers", True)


def musubi(shape: FileShape) -> Verdict:
    if shape.layout != "kohya":
        return Verdict(
            "musubi-tuner",
            False,
            "its --lora_weight merge matches only lora_unet_<name> keys, so nothing of this layout is merged",
            "save.format: kohya, or cadence convert FILE OUT --to kohya",
        )
    if shape.dora is not None:
        return Verdict(
            "musubi-tuner",
            False,
            "its merge has no DoRA: dora_scale would be left unused",
            "train without DoRA",
        )
    convs = sorted(n for n, conv in shape.modules.items() if conv)
    if convs:
        return Verdict(
            "musubi-tuner",
            False,
            f"its merge handles Linear and Conv2d LoRA only; {convs[0]} is a Conv3d",
            f"leave {convs[0]} out of network_kwargs.include_patterns",
        )
    return Verdict("musubi-tuner", True)


def verdicts(shape: FileShape) -> list[Verdict]:
    """The rules above for Wan; a family with its own tools' rules (`ModelFamily.loader_rules`, found from the
    module names) answers for its files."""
    from cadence.networks.keymap import for_names

    rules = _family_rules(for_names(shape.modules).family)
    if rules is not None:
        return rules.verdicts(shape)
    return [comfyui(shape), diffusers(shape), musubi(shape)]


def _family_rules(family: str):
    from cadence.models.registry import families

    return next((f.loader_rules for f in families() if f.name == family), None)


def summary_lines(shape: FileShape, what: str = "the LoRA files", plural: bool = True) -> list[str]:
    """One line per tool: loads, or why not and what to do."""
    does, doesnt = ("load", "do not load") if plural else ("loads", "does not load")
    lines = []
    for v in verdicts(shape):
        if v.loads:
            lines.append(f"{what} ({shape.layout} layout) {does} in {v.tool} at the trained strength")
        else:
            lines.append(f"{what} ({shape.layout} layout) {doesnt} in {v.tool}: {v.reason}; {v.fix}")
    return lines
