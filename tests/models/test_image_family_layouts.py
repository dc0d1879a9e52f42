"""LoRA files of the image families in every layout Cadence writes: read back exactly, and loaded through the
family's own diffusers pipeline (`load_lora_weights`) into the tiny model at the trained strength: each fused
weight moves by up @ down * alpha / rank. The verdicts `cadence validate` / `inspect` print agree."""

from __future__ import annotations

import diffusers
import pytest
import torch

from cadence.networks.formats import LoraTensors, load_lora_file, save_lora_file
from cadence.networks.loaders import shape_of, verdicts
from cadence.networks.targeting import select_targets

PIPELINES = {"flux": "FluxPipeline", "qwen_image": "QwenImagePipeline", "zimage": "ZImagePipeline"}
# diffusers' FLUX converter assumes FLUX.1's sizes for single-block linear1 (3072 x 3 + 12288 rows), so the
# tiny model's single blocks are left out of the ComfyUI/kohya files it reads (the real model's are not)
ONLY = {"flux": "transformer_blocks."}


def _modules(pipe, arch: str, rank: int = 2, alpha: float = 6.0) -> dict:
    from cadence.config.schema import NetworkConfig

    gen = torch.Generator().manual_seed(7)
    targets = select_targets(pipe.transformer, NetworkConfig(linear=rank, linear_alpha=alpha), warn=False)
    return {
        name: LoraTensors(
            torch.randn(rank, m.in_features, generator=gen) * 0.1,
            torch.randn(m.out_features, rank, generator=gen) * 0.1,
            alpha,
        )
        for name, m in targets.items()
        if name.startswith(ONLY.get(arch, ""))
    }


@pytest.mark.parametrize("layout", ["comfyui", "kohya", "diffusers"])
@pytest.mark.parametrize("arch", sorted(PIPELINES))
def test_layout_reads_back_and_loads_in_diffusers_at_trained_strength(tiny_dirs, tmp_path, arch, layout):
    folder = tiny_dirs(arch)
    pipe = getattr(diffusers, PIPELINES[arch]).from_pretrained(str(folder))
    modules = _modules(pipe, arch)
    path = tmp_path / f"{arch}_{layout}.safetensors"
    save_lora_file(path, modules, {"arch": arch}, layout, torch.float32)
    back = load_lora_file(path)
    assert back.layout == layout and set(back.modules) == set(modules)
    for name, t in modules.items():
        torch.testing.assert_close(back.modules[name].diff_weight(), t.diff_weight())
    verdict = {v.tool: v for v in verdicts(shape_of(back.modules, layout))}
    if arch == "zimage" and layout == "kohya":
        assert not verdict["ComfyUI"].loads  # ComfyUI maps lora_unet_ only to Z-Image's own fused names
    if not verdict["diffusers"].loads:
        pytest.fail(f"{arch} {layout}: {verdict['diffusers'].reason}")
    before = {n: m.weight.detach().clone() for n, m in pipe.transformer.named_modules() if n in modules}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=1.0)
    fused = dict(pipe.transformer.named_modules())
    for name, t in modules.items():
        delta = fused[name].weight.detach() - before[name]
        torch.testing.assert_close(delta, t.diff_weight().to(delta), rtol=1e-4, atol=1e-6)


def test_fluxs_fused_layers_are_block_diagonal_in_the_comfyui_file(tiny_dirs, tmp_path):
    """to_q/to_k/to_v become one BFL img_attn.qkv LoRA of rank 3r and alpha 3*alpha: ComfyUI applies it to the
    fused weight at exactly the members' deltas."""
    from safetensors.torch import load_file

    pipe = diffusers.FluxPipeline.from_pretrained(str(tiny_dirs("flux")))
    modules = _modules(pipe, "flux")
    path = tmp_path / "flux.safetensors"
    save_lora_file(path, modules, {"arch": "flux"}, "comfyui", torch.float32)
    raw = load_file(str(path))
    stem = "diffusion_model.double_blocks.0.img_attn.qkv"
    down, up, alpha = raw[f"{stem}.lora_down.weight"], raw[f"{stem}.lora_up.weight"], raw[f"{stem}.alpha"]
    assert down.shape[0] == 6 and float(alpha) == 18.0
    fused_delta = up @ down * float(alpha) / down.shape[0]
    members = [modules[f"transformer_blocks.0.attn.to_{p}"].diff_weight() for p in "qkv"]
    torch.testing.assert_close(fused_delta, torch.cat(members))
    assert not any(k.startswith("diffusion_model.transformer_blocks") for k in raw)
