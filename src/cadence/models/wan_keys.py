"""Wan's LoRA key map: diffusers `WanTransformer3DModel` names <-> original Wan / ComfyUI (`diffusion_model.` keys).

Cadence keys every LoRA module by its diffusers name (`blocks.0.attn1.to_q`); ComfyUI and the original Wan
code name the same layer `blocks.0.self_attn.q`. The table follows diffusers' own converters
(`scripts/convert_wan_to_diffusers.py` and `_convert_non_diffusers_wan_lora_to_diffusers` in
`diffusers/loaders/lora_conversion_utils.py`, checked against diffusers 0.42):

    attn1 -> self_attn, attn2 -> cross_attn, to_q/k/v -> q/k/v, to_out.0 -> o,
    add_k_proj/add_v_proj -> k_img/v_img, ffn.net.0.proj -> ffn.0, ffn.net.2 -> ffn.2,
    condition_embedder.text_embedder.linear_1/2 -> text_embedding.0/2,
    condition_embedder.time_embedder.linear_1/2 -> time_embedding.0/2,
    condition_embedder.time_proj -> time_projection.1, proj_out -> head.head,
    condition_embedder.image_embedder.ff.net.0.proj/ff.net.2 -> img_emb.proj.1/3, patch_embedding stays.

Kohya/musubi files flatten the original name with underscores (`lora_unet_blocks_0_self_attn_q`); that
form is ambiguous on its own, so it is parsed against the known original names.
"""

from __future__ import annotations

import re

from cadence.models.family import KeyMap

_BLOCK_PARTS: tuple[tuple[str, str], ...] = (
    ("attn1.to_q", "self_attn.q"),
    ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn1.norm_q", "self_attn.norm_q"),
    ("attn1.norm_k", "self_attn.norm_k"),
    ("attn2.to_q", "cross_attn.q"),
    ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_q", "cross_attn.norm_q"),
    ("attn2.norm_k", "cross_attn.norm_k"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
)

_GLOBAL_PARTS: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("proj_out", "head.head"),
)

_BLOCK_TO_ORIG = dict(_BLOCK_PARTS)
_BLOCK_TO_DIFF = {o: d for d, o in _BLOCK_PARTS}
_GLOBAL_TO_ORIG = dict(_GLOBAL_PARTS)
_GLOBAL_TO_DIFF = {o: d for d, o in _GLOBAL_PARTS}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_KOHYA_BLOCK_RE = re.compile(r"^blocks_(\d+)_(.+)$")
_KOHYA_BLOCK = {o.replace(".", "_"): o for o in _BLOCK_TO_DIFF}
_KOHYA_GLOBAL = {o.replace(".", "_"): o for o in _GLOBAL_TO_DIFF}


def _translate(name: str, block_map: dict[str, str], global_map: dict[str, str], what: str) -> str:
    match = _BLOCK_RE.match(name)
    if match and match.group(2) in block_map:
        return f"blocks.{match.group(1)}.{block_map[match.group(2)]}"
    if name in global_map:
        return global_map[name]
    raise KeyError(f"no {what} name is known for module {name!r} (Wan transformer layout expected)")


def to_original(diffusers_name: str) -> str:
    """`blocks.0.attn1.to_q` -> `blocks.0.self_attn.q` (the name after `diffusion_model.`)."""
    return _translate(diffusers_name, _BLOCK_TO_ORIG, _GLOBAL_TO_ORIG, "original-Wan")


def to_diffusers(original_name: str) -> str:
    """`blocks.0.self_attn.q` -> `blocks.0.attn1.to_q`."""
    return _translate(original_name, _BLOCK_TO_DIFF, _GLOBAL_TO_DIFF, "diffusers")


def kohya_to_original(flat: str) -> str:
    """`blocks_0_self_attn_q` (after `lora_unet_`) -> `blocks.0.self_attn.q`."""
    match = _KOHYA_BLOCK_RE.match(flat)
    if match and match.group(2) in _KOHYA_BLOCK:
        return f"blocks.{match.group(1)}.{_KOHYA_BLOCK[match.group(2)]}"
    if flat in _KOHYA_GLOBAL:
        return _KOHYA_GLOBAL[flat]
    raise KeyError(f"no original-Wan name is known for kohya module {flat!r}")


class WanKeyMap(KeyMap):
    """The table above as the Wan family's `KeyMap` (one original name per diffusers name)."""

    family = "wan"

    def to_original(self, name: str) -> str:
        return to_original(name)

    def to_diffusers(self, original: str) -> str:
        return to_diffusers(original)

    def kohya_to_original(self, flat: str) -> str:
        return kohya_to_original(flat)


WAN_KEYS = WanKeyMap()
