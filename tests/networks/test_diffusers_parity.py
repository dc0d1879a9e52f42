"""diffusers' own `load_lora_weights` applied to Cadence's files reproduces the trainer's prediction.

Both experts of the tiny Wan 2.2 I2V pipeline get their own network (alpha != rank, random non-zero up
weights); the high-noise file is loaded into `transformer`, the low-noise file with
`load_into_transformer_2=True`, and each transformer must give the trainer's output (fp32, atol 1e-5).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from lora_test_helpers import forward, transformer_inputs

from cadence.config.schema import NetworkConfig
from cadence.networks import LoRANetwork, save_lora_file


def _trained_outputs(pipe, cfg: NetworkConfig, components: list[str], tmp_path, layout: str):
    """Attach a network per component, randomize it, return ({component: output}, {component: file})."""
    outputs, files, base = {}, {}, {}
    for i, comp in enumerate(components):
        model = getattr(pipe, comp)
        inputs = transformer_inputs(model)
        base[comp] = forward(model, inputs)
        net = LoRANetwork(model, cfg, name=comp, seed=i).apply()
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for m in net.modules_by_name.values():
                m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.3)
        outputs[comp] = forward(model, inputs)
        assert (outputs[comp] - base[comp]).abs().max() > 1e-2  # the LoRA really changes the prediction
        files[comp] = tmp_path / f"{comp}_{layout}.safetensors"
        save_lora_file(
            files[comp], net.to_lora_tensors(), {"step": "10", "expert": comp}, layout, torch.float32
        )
    return outputs, files, base


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_wan22_i2v_both_experts_load_in_diffusers(layout, tiny_pipeline_dir, tmp_path) -> None:
    folder = tiny_pipeline_dir("wan22_14b_i2v")
    cfg = NetworkConfig(linear=4, linear_alpha=3.0)  # scale 0.75: alpha is not rank
    outputs, files, base = _trained_outputs(
        WanImageToVideoPipeline.from_pretrained(folder),
        cfg,
        ["transformer", "transformer_2"],
        tmp_path,
        layout,
    )
    fresh = WanImageToVideoPipeline.from_pretrained(folder)
    fresh.load_lora_weights(str(files["transformer"]))
    fresh.load_lora_weights(str(files["transformer_2"]), load_into_transformer_2=True)
    for comp in ("transformer", "transformer_2"):
        model = getattr(fresh, comp)
        got = forward(model, transformer_inputs(model))
        torch.testing.assert_close(got, outputs[comp], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_wan21_single_transformer_loads_in_diffusers(layout, tiny_pipeline_dir, tmp_path) -> None:
    folder = tiny_pipeline_dir("wan21")
    cfg = NetworkConfig(linear=8, linear_alpha=5.0)
    outputs, files, _ = _trained_outputs(
        WanPipeline.from_pretrained(folder), cfg, ["transformer"], tmp_path, layout
    )
    fresh = WanPipeline.from_pretrained(folder)
    fresh.load_lora_weights(str(files["transformer"]))
    got = forward(fresh.transformer, transformer_inputs(fresh.transformer))
    torch.testing.assert_close(got, outputs["transformer"], atol=1e-5, rtol=1e-5)


def test_diffusers_layout_keeps_mixed_ranks_and_alphas(tiny_pipeline_dir, tmp_path) -> None:
    """Conv patch embedding (rank 2, alpha 1) beside block Linears (rank 4, alpha 3) and proj_out."""
    folder = tiny_pipeline_dir("wan21")
    cfg = NetworkConfig(
        linear=4,
        linear_alpha=3.0,
        conv=2,
        conv_alpha=1.0,
        network_kwargs={"include_patterns": ["patch_embedding", "proj_out"]},
    )
    outputs, files, _ = _trained_outputs(
        WanPipeline.from_pretrained(folder), cfg, ["transformer"], tmp_path, "diffusers"
    )
    fresh = WanPipeline.from_pretrained(folder)
    fresh.load_lora_weights(str(files["transformer"]))
    got = forward(fresh.transformer, transformer_inputs(fresh.transformer))
    torch.testing.assert_close(got, outputs["transformer"], atol=1e-5, rtol=1e-5)
