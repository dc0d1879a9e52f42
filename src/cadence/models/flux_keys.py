"""FLUX.1's LoRA key map: diffusers `FluxTransformer2DModel` names <-> the original (BFL) checkpoint names that
ComfyUI's `diffusion_model.` keys and kohya's `lora_unet_` keys use.

The table follows diffusers' own converter (`_convert_kohya_flux_lora_to_diffusers` /
`_convert_sd_scripts_to_ai_toolkit` in `diffusers/loaders/lora_conversion_utils.py`, 0.42):

    transformer_blocks.N.           -> double_blocks.N.
        attn.to_q/to_k/to_v         -> img_attn.qkv (one fused layer)   attn.to_out.0  -> img_attn.proj
        attn.add_q/k/v_proj         -> txt_attn.qkv (fused)             attn.to_add_out -> txt_attn.proj
        ff.net.0.proj / ff.net.2    -> img_mlp.0 / img_mlp.2            norm1.linear   -> img_mod.lin
        ff_context.net.0.proj / .2  -> txt_mlp.0 / txt_mlp.2            norm1_context.linear -> txt_mod.lin
    single_transformer_blocks.N.    -> single_blocks.N.
        attn.to_q/to_k/to_v + proj_mlp -> linear1 (fused; rows q, k, v, mlp)  proj_out -> linear2
        norm.linear                 -> modulation.lin
    x_embedder -> img_in, context_embedder -> txt_in, time_text_embed.{timestep,text,guidance}_embedder.linear_1/2
    -> {time,vector,guidance}_in.in_layer/out_layer, proj_out -> final_layer.linear,
    norm_out.linear -> final_layer.adaLN_modulation.1 (its two halves swapped: BFL is [shift, scale]).

A fused original layer holds its members' LoRAs block-diagonally: down = [down_q; down_k; down_v] (rank n*r),
up = blockdiag(up_q, up_k, up_v), alpha = n * alpha, so up @ down * alpha / rank is exactly the members' deltas
stacked; diffusers' converter recognises that sparse form and splits it back (as Cadence does on reading; a
fused LoRA that is not block-diagonal, as other trainers write, gives every member the shared down). Only
LoRA fuses: LoKr/LoHa/DoRA on fused layers have no ComfyUI/kohya form and go to the diffusers layout.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from cadence.models.family import KeyMap

if TYPE_CHECKING:
    from cadence.networks.tensors import AdapterTensors

_DOUBLE = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_GLOBAL = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
SWAPPED = "norm_out.linear"  # diffusers' [scale, shift] halves are BFL's [shift, scale]
_BLOCKS = (
    ("transformer_blocks", "double_blocks", _DOUBLE, _DOUBLE_FUSED),
    (
        "single_transformer_blocks",
        "single_blocks",
        _SINGLE,
        _SINGLE_FUSED,
    ),
)
_DIFF_RE = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_ORIG_RE = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_KOHYA_RE = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(.+)$")


def _split_members(members: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {m: members for m in members}


class FluxKeyMap(KeyMap):
    family = "flux"

    # ------------------------------------------------------------------------------------------ names
    def to_original(self, name: str) -> str:
        match = _DIFF_RE.match(name)
        if match:
            group, index, part = match.groups()
            for diff, orig, plain, fused in _BLOCKS:
                if group != diff:
                    continue
                if part in plain:
                    return f"{orig}.{index}.{plain[part]}"
                for fused_name, members in fused.items():
                    if part in members:
                        return f"{orig}.{index}.{fused_name}"
        if name in _GLOBAL:
            return _GLOBAL[name]
        raise KeyError(
            f"no original FLUX name is known for module {name!r} (FluxTransformer2DModel expected)"
        )

    def to_diffusers(self, original: str) -> str:
        match = _ORIG_RE.match(original)
        if match:
            group, index, part = match.groups()
            for diff, orig, plain, fused in _BLOCKS:
                if group == orig:
                    back = {o: d for d, o in plain.items()}
                    if part in back:
                        return f"{diff}.{index}.{back[part]}"
                    if part in fused:
                        raise KeyError(
                            f"{original!r} is a fused FLUX layer of {len(fused[part])} diffusers layers"
                        )
        back = {o: d for d, o in _GLOBAL.items()}
        if original in back:
            return back[original]
        raise KeyError(f"no diffusers name is known for FLUX module {original!r}")

    def kohya_to_original(self, flat: str) -> str:
        match = _KOHYA_RE.match(flat)
        if match:
            group, index, part = match.groups()
            for _diff, orig, plain, fused in _BLOCKS:
                if group == orig:
                    for known in (*plain.values(), *fused):
                        if known.replace(".", "_") == part:
                            return f"{orig}.{index}.{known}"
        for known in _GLOBAL.values():
            if known.replace(".", "_") == flat:
                return known
        raise KeyError(f"no original FLUX name is known for kohya module {flat!r}")

    def _fused_members(self, original: str) -> tuple[str, str, tuple[str, ...]] | None:
        """(diffusers block prefix, fused name, member suffixes) for a fused original name, else None."""
        match = _ORIG_RE.match(original)
        if not match:
            return None
        group, index, part = match.groups()
        for diff, orig, _plain, fused in _BLOCKS:
            if group == orig and part in fused:
                return f"{diff}.{index}.", part, fused[part]
        return None

    # ------------------------------------------------------------------------------------- module sets
    def layout_problems(self, names: list[str], algo: str, dora: bool) -> list[str]:
        """Why adapters of `algo` (with DoRA or not) on these diffusers module names have no ComfyUI/kohya form:
        a fused layer needs all its members, as LoRA (its block-diagonal form exists only for LoRA)."""
        problems = []
        for original, group in self._groups(names).items():
            fused = self._fused_members(original)
            if fused is None:
                if group == [SWAPPED] and (algo != "lora" or dora):
                    problems.append(
                        f"{SWAPPED} has no ComfyUI form as {algo}{' + DoRA' if dora else ''} (BFL swaps its halves); "
                        "leave it out of the targets or save in the diffusers layout"
                    )
                continue
            prefix, _, members = fused
            expected = [prefix + m for m in members]
            missing = [m for m in expected if m not in group]
            if missing:
                problems.append(
                    f"FLUX fuses {', '.join(expected)} into {original} in the ComfyUI/kohya layouts: adapt all of "
                    f"them or none (missing {', '.join(missing)}), or save in the diffusers layout"
                )
            elif algo != "lora" or dora:
                problems.append(
                    f"{original} fuses {', '.join(members)} in the ComfyUI/kohya layouts, which hold only plain LoRA "
                    f"there ({algo}{' + DoRA' if dora else ''} given); train type lora, or leave those layers out "
                    "(network_kwargs.ignore_if_contains)"
                    + (", or save in the diffusers layout (output-axis DoRA)" if algo == "lora" else "")
                )
        return problems

    def export_problems(self, modules: dict[str, AdapterTensors]) -> list[str]:
        algos = {t.algo for t in modules.values()}
        dora = any(t.dora_scale is not None for t in modules.values())
        problems = self.layout_problems(list(modules), algos.pop() if len(algos) == 1 else "mixed", dora)
        for original, group in self._groups(list(modules)).items():
            tensors = [modules[n] for n in group]
            if self._fused_members(original) and len({(t.rank, float(t.alpha or 0)) for t in tensors}) > 1:
                problems.append(
                    f"{original}: its fused members have different ranks or alphas; use the diffusers layout"
                )
        return problems

    def _groups(self, names) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(self.to_original(name), []).append(name)
        return groups

    def export(self, modules: dict[str, AdapterTensors]) -> dict[str, AdapterTensors]:
        problems = self.export_problems(modules)
        if problems:
            raise ValueError("; ".join(problems))
        out: dict[str, AdapterTensors] = {}
        for original, names in self._groups(modules).items():
            fused = self._fused_members(original)
            if fused is None:
                (name,) = names
                t = modules[name]
                out[original] = _swapped(t) if name == SWAPPED else t
                continue
            prefix, _, members = fused
            parts = [modules[prefix + m] for m in members]
            out[original] = _fuse(parts)
        return out

    def restore(self, modules: dict[str, AdapterTensors]) -> dict[str, AdapterTensors]:
        out: dict[str, AdapterTensors] = {}
        for original, t in modules.items():
            fused = self._fused_members(original)
            if fused is None:
                name = self.to_diffusers(original)
                out[name] = _swapped(t) if name == SWAPPED else t
                continue
            prefix, fused_name, members = fused
            if t.algo != "lora" or t.dora_scale is not None:
                raise KeyError(
                    f"{original} is a fused FLUX layer; Cadence splits only a LoRA there, not {t.algo}"
                )
            for member, part in zip(members, _split(t, fused_name, len(members)), strict=True):
                out[prefix + member] = part
        return out


def _tensors(algo: str, tensors: dict, alpha: float | None) -> AdapterTensors:
    from cadence.networks.tensors import AdapterTensors  # networks imports the config package: lazily

    return AdapterTensors(algo, tensors, alpha)


def _swapped(t: AdapterTensors) -> AdapterTensors:
    """norm_out.linear's LoRA with the two output halves exchanged (an involution)."""
    if t.algo != "lora":
        raise KeyError(f"{SWAPPED} holds {t.algo}; only a LoRA's halves can be swapped")
    up = t.tensors["lora_up.weight"]
    half = up.shape[0] // 2
    tensors = {**t.tensors, "lora_up.weight": torch.cat([up[half:], up[:half]])}
    return _tensors("lora", tensors, t.alpha)


def _fuse(parts: list[AdapterTensors]) -> AdapterTensors:
    """Block-diagonal LoRA of a fused layer: rank n*r, alpha n*alpha (the same scale alpha/r)."""
    downs = [p.tensors["lora_down.weight"] for p in parts]
    ups = [p.tensors["lora_up.weight"] for p in parts]
    rank = downs[0].shape[0]
    up = torch.zeros(sum(u.shape[0] for u in ups), rank * len(parts), dtype=ups[0].dtype)
    row = 0
    for i, u in enumerate(ups):
        up[row : row + u.shape[0], i * rank : (i + 1) * rank] = u
        row += u.shape[0]
    down = torch.cat(downs, dim=0)
    return _tensors(
        "lora", {"lora_down.weight": down, "lora_up.weight": up}, float(parts[0].alpha) * len(parts)
    )


def _member_rows(fused_name: str, up: torch.Tensor, down: torch.Tensor, n: int) -> list[int]:
    """Output rows per member: q/k/v are hidden-sized (the layer's input size); linear1's mlp takes the rest."""
    hidden = down.shape[1]
    if fused_name == "linear1":
        return [hidden] * 3 + [up.shape[0] - 3 * hidden]
    return [up.shape[0] // n] * n


def _split(t: AdapterTensors, fused_name: str, n: int) -> list[AdapterTensors]:
    down, up = t.tensors["lora_down.weight"], t.tensors["lora_up.weight"]
    rows = _member_rows(fused_name, up, down, n)
    rank = down.shape[0]
    blocks = list(torch.split(up, rows, dim=0))
    sparse = rank % n == 0
    if sparse:
        r = rank // n
        for j, block in enumerate(blocks):
            others = torch.cat([block[:, : j * r], block[:, (j + 1) * r :]], dim=1)
            sparse = sparse and bool((others == 0).all())
    if sparse:
        r = rank // n
        return [
            _tensors(
                "lora",
                {
                    "lora_down.weight": down[j * r : (j + 1) * r].clone(),
                    "lora_up.weight": block[:, j * r : (j + 1) * r].clone(),
                },
                float(t.alpha) / n,
            )
            for j, block in enumerate(blocks)
        ]
    # a shared down (kohya without split_qkv): each member keeps the whole down and its rows of up
    return [
        _tensors("lora", {"lora_down.weight": down.clone(), "lora_up.weight": block.clone()}, float(t.alpha))
        for block in blocks
    ]


FLUX_KEYS = FluxKeyMap()
