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


@pytest.mark.parametrize("layout", ["comfyui", "diffusers", "kohya"])
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


@pytest.mark.parametrize(
    "adapter_config",
    [
        {"lora_alpha": 4.0, "alpha_pattern": {"attn1.to_q": 8.0, r"blocks\.1\.ffn\.net\.0\.proj": 2.0}},
        {"lora_alpha": 4.0, "use_rslora": True},
    ],
    ids=["suffix-alpha-pattern", "rslora"],
)
def test_third_party_peft_alpha_rules_read_as_diffusers_applies_them(
    adapter_config, tiny_pipeline_dir, tmp_path
) -> None:
    """A diffusers-layout file from PEFT tooling: alpha_pattern keys are regexes matched at the end of the
    name, rsLoRA scales by alpha/sqrt(r). Cadence's reading (and so convert / sampling) must equal diffusers'."""
    import json

    from safetensors.torch import save_file

    from cadence.networks.formats import load_lora_file

    folder = tiny_pipeline_dir("wan22_14b_i2v")
    model = WanImageToVideoPipeline.from_pretrained(folder).transformer
    names = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")
    ]
    g, rank, tensors = torch.Generator().manual_seed(0), 4, {}
    for n in names:
        layer = model.get_submodule(n)
        tensors[f"transformer.{n}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.1
        tensors[f"transformer.{n}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.1
    config = {"r": rank, "target_modules": names, **adapter_config}
    path = tmp_path / "peft.safetensors"
    meta = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    save_file(tensors, str(path), metadata=meta)
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(path))
    lora = load_lora_file(path)
    checked = 0
    for n in ("blocks.0.attn1.to_q", "blocks.1.attn1.to_q", "blocks.1.ffn.net.0.proj", "blocks.0.attn2.to_k"):
        layer, t = pipe.transformer.get_submodule(n), lora.modules[n]
        eye = torch.eye(layer.base_layer.in_features)
        with torch.no_grad():
            applied = (layer(eye) - layer.base_layer(eye)).T
        ours = (t.up.float() @ t.down.float()) * t.alpha / t.rank
        torch.testing.assert_close(ours, applied, atol=1e-6, rtol=1e-5)
        checked += 1
    assert checked == 4 and len({t.alpha for t in lora.modules.values()}) == (
        3 if "alpha_pattern" in config else 1
    )


def test_peft_dora_file_without_magnitudes_refused(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    from cadence.networks.formats import load_lora_file

    path = tmp_path / "dora.safetensors"
    tensors = {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 8)}
    tensors["transformer.blocks.0.attn1.to_q.lora_B.weight"] = torch.zeros(8, 2)
    save_file(
        tensors, str(path), metadata={"lora_adapter_metadata": json.dumps({"transformer.use_dora": True})}
    )
    with pytest.raises(ValueError, match="DoRA"):
        load_lora_file(path)


def test_output_axis_dora_loads_in_diffusers_for_both_experts(tiny_pipeline_dir, tmp_path) -> None:
    """PEFT's DoRA (magnitude per output row) through diffusers' own loader, high- and low-noise files."""
    from cadence.config.schema import NetworkKwargs

    folder = tiny_pipeline_dir("wan22_14b_i2v")
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    cfg = NetworkConfig(
        type="dora", linear=4, linear_alpha=3.0, network_kwargs=NetworkKwargs(wd_on_output=True)
    )
    outputs, files = {}, {}
    for i, comp in enumerate(["transformer", "transformer_2"]):
        model = getattr(pipe, comp)
        net = LoRANetwork(model, cfg, name=comp, seed=i)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.add_(
                    torch.randn(p.shape, generator=g)
                    * (0.05 * p.abs().mean() if name.endswith("dora_scale") else 0.3)
                )
        net.apply().eval()
        outputs[comp] = forward(model, transformer_inputs(model))
        files[comp] = tmp_path / f"{comp}.safetensors"
        save_lora_file(files[comp], net.to_lora_tensors(), {"expert": comp}, "diffusers", torch.float32)
    fresh = WanImageToVideoPipeline.from_pretrained(folder)
    fresh.load_lora_weights(str(files["transformer"]))
    fresh.load_lora_weights(str(files["transformer_2"]), load_into_transformer_2=True)
    for comp in ("transformer", "transformer_2"):
        model = getattr(fresh, comp)
        torch.testing.assert_close(
            forward(model, transformer_inputs(model)), outputs[comp], atol=1e-5, rtol=1e-5
        )
