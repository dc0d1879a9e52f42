"""Module names in LoRA files, per model family.

Cadence keys every LoRA module by its diffusers name; the ComfyUI (`diffusion_model.`) and kohya
(`lora_unet_`) layouts use the original checkpoint's names, which each family's `KeyMap`
(`cadence.models.family`) translates. This module finds the right key map: by arch (a file's `arch`
metadata, a config's `model.arch`), by transformer (its class), or by the names themselves (the family whose
map knows them all, Wan first). `to_original` / `to_diffusers` / `kohya_to_original` are Wan's
(`cadence.models.wan_keys`), kept for callers that name Wan modules.
"""

from __future__ import annotations

from collections.abc import Iterable

from cadence.models.family import KeyMap
from cadence.models.wan_keys import WAN_KEYS, kohya_to_original, to_diffusers, to_original

__all__ = ["KeyMap", "for_arch", "for_names", "for_root", "kohya_to_original", "to_diffusers", "to_original"]


def for_arch(arch: str | None) -> KeyMap | None:
    """The key map of a registered arch, or None for an unknown one (or None)."""
    from cadence.models.registry import arch_names, family_of

    return family_of(arch).keymap if arch in arch_names() else None


def for_names(names: Iterable[str]) -> KeyMap:
    """The key map of the first family that knows every diffusers name (Wan when none does: its errors
    then name the first unknown module)."""
    from cadence.models.registry import families

    names = list(names)
    for family in families():
        if family.keymap.knows(names):
            return family.keymap
    return WAN_KEYS


def for_root(root) -> KeyMap:
    """The key map of a transformer's family (by class), Wan's for a module of no registered family."""
    from cadence.models.registry import family_for_transformer

    family = family_for_transformer(root)
    return family.keymap if family is not None else WAN_KEYS
