"""Transformer state dicts in the layouts their checkpoints are published in (the original / ComfyUI names),
made from a diffusers model's state dict, for the single-file loading tests.

Each function is the inverse of diffusers 0.42.1's own converter (`diffusers.loaders.single_file_utils`:
`convert_wan_transformer_to_diffusers`, `convert_flux_transformer_checkpoint_to_diffusers`,
`convert_z_image_transformer_checkpoint_to_diffusers`; Qwen-Image's files carry diffusers' names). The tests
check it: `from_single_file` of the written file gives back the diffusers model's state bit for bit.
"""

from __future__ import annotations

import re

import torch

# diffusers -> original Wan names, applied in order (the converter's renames, inverted; norm2 is the cross-attention
# norm, the original's norm3)
WAN_RENAMES = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    (".norm2.", ".norm3."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
)


def wan_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A WanTransformer3DModel state dict under the original Wan / ComfyUI names."""
    out = {}
    for key, value in state.items():
        name = key
        if name == "scale_shift_table":
            name = "head.modulation"
        elif name.startswith("proj_out."):
            name = "head.head." + name[len("proj_out.") :]
        name = re.sub(r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation", name)
        for old, new in WAN_RENAMES:
            name = name.replace(old, new)
        out[name] = value
    return out


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous holds (scale, shift), BFL's final layer (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel state dict under Black Forest Labs' names (flux1-dev.safetensors)."""
    s = dict(state)
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        return s.pop(name)

    embedders = {
        "time_text_embed.timestep_embedder": "time_in",
        "time_text_embed.text_embedder": "vector_in",
        "time_text_embed.guidance_embedder": "guidance_in",
    }
    for ours, theirs in embedders.items():
        if f"{ours}.linear_1.weight" in s:
            for p in ("weight", "bias"):
                out[f"{theirs}.in_layer.{p}"] = take(f"{ours}.linear_1.{p}")
                out[f"{theirs}.out_layer.{p}"] = take(f"{ours}.linear_2.{p}")
    for p in ("weight", "bias"):
        out[f"txt_in.{p}"] = take(f"context_embedder.{p}")
        out[f"img_in.{p}"] = take(f"x_embedder.{p}")
        out[f"final_layer.linear.{p}"] = take(f"proj_out.{p}")
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(take(f"norm_out.linear.{p}"))
    doubles = sorted({int(k.split(".")[1]) for k in s if k.startswith("transformer_blocks.")})
    for i in doubles:
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{o}img_mod.lin.{p}"] = take(f"{d}norm1.linear.{p}")
            out[f"{o}txt_mod.lin.{p}"] = take(f"{d}norm1_context.linear.{p}")
            out[f"{o}img_attn.qkv.{p}"] = torch.cat([take(f"{d}attn.to_{x}.{p}") for x in "qkv"])
            out[f"{o}txt_attn.qkv.{p}"] = torch.cat([take(f"{d}attn.add_{x}_proj.{p}") for x in "qkv"])
            out[f"{o}img_attn.proj.{p}"] = take(f"{d}attn.to_out.0.{p}")
            out[f"{o}txt_attn.proj.{p}"] = take(f"{d}attn.to_add_out.{p}")
            out[f"{o}img_mlp.0.{p}"] = take(f"{d}ff.net.0.proj.{p}")
            out[f"{o}img_mlp.2.{p}"] = take(f"{d}ff.net.2.{p}")
            out[f"{o}txt_mlp.0.{p}"] = take(f"{d}ff_context.net.0.proj.{p}")
            out[f"{o}txt_mlp.2.{p}"] = take(f"{d}ff_context.net.2.{p}")
        out[f"{o}img_attn.norm.query_norm.scale"] = take(f"{d}attn.norm_q.weight")
        out[f"{o}img_attn.norm.key_norm.scale"] = take(f"{d}attn.norm_k.weight")
        out[f"{o}txt_attn.norm.query_norm.scale"] = take(f"{d}attn.norm_added_q.weight")
        out[f"{o}txt_attn.norm.key_norm.scale"] = take(f"{d}attn.norm_added_k.weight")
    singles = sorted({int(k.split(".")[1]) for k in s if k.startswith("single_transformer_blocks.")})
    for i in singles:
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{o}modulation.lin.{p}"] = take(f"{d}norm.linear.{p}")
            parts = [take(f"{d}attn.to_{x}.{p}") for x in "qkv"] + [take(f"{d}proj_mlp.{p}")]
            out[f"{o}linear1.{p}"] = torch.cat(parts)
            out[f"{o}linear2.{p}"] = take(f"{d}proj_out.{p}")
        out[f"{o}norm.query_norm.scale"] = take(f"{d}attn.norm_q.weight")
        out[f"{o}norm.key_norm.scale"] = take(f"{d}attn.norm_k.weight")
    if s:
        raise KeyError(f"no BFL name for {sorted(s)[:5]}")
    return out


def zimage_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ZImageTransformer2DModel state dict under the original Z-Image names (fused q/k/v)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.replace("all_x_embedder.2-1.", "x_embedder.").replace(
            "all_final_layer.2-1.", "final_layer."
        )
        name = name.replace(".attention.to_out.0.", ".attention.out.")
        name = name.replace(".attention.norm_q.", ".attention.q_norm.").replace(
            ".attention.norm_k.", ".attention.k_norm."
        )
        if ".attention.to_k." in name or ".attention.to_v." in name:
            continue
        if ".attention.to_q." in name:
            parts = [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            out[name.replace(".attention.to_q.", ".attention.qkv.")] = torch.cat(parts)
            continue
        out[name] = value
    return out


def qwen_image_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen-Image's published transformer files (and ComfyUI's) use diffusers' own names."""
    return dict(state)


ORIGINAL = {
    "WanTransformer3DModel": wan_original,
    "FluxTransformer2DModel": flux_original,
    "ZImageTransformer2DModel": zimage_original,
    "QwenImageTransformer2DModel": qwen_image_original,
}


def original_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s weights under its original checkpoint's names (contiguous copies, ready for save_file)."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return {k: v.contiguous() for k, v in ORIGINAL[type(model).__name__](state).items()}


def write_original_file(folder, component: str, out) -> object:
    """`folder/component`'s weights as one safetensors file in its original layout, at `out` (returned)."""
    import json
    from pathlib import Path

    import diffusers
    from safetensors.torch import save_file

    name = json.loads((Path(folder) / component / "config.json").read_text())["_class_name"]
    model = getattr(diffusers, name).from_pretrained(str(Path(folder) / component))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_state(model), str(out))
    return out
