"""Which tool loads which file: the verdicts of `cadence.networks.loaders` checked against diffusers' real
`load_lora_weights`, and against ComfyUI's and musubi-tuner's key rules (re-implemented from their code),
with deltas compared to the trained modules' for every layout, module kind and adapter type."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy_rules import patched_weights
from diffusers import WanImageToVideoPipeline
from lora_test_helpers import forward, transformer_inputs
from musubi_rules import merged_weights
from safetensors.torch import load_file

from cadence.config.schema import NetworkConfig, NetworkKwargs
from cadence.networks import LoRANetwork, keymap, load_lora_file, save_lora_file
from cadence.networks.loaders import comfyui, diffusers, musubi, shape_of

OUTSIDE = ["proj_out", "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1"]
ATTN = NetworkKwargs(exclude_patterns=[".*"], include_patterns=[r"\.attn1\."])
CASES = {
    "lora_blocks": NetworkConfig(linear=4, linear_alpha=3.0),
    "lora_attention": NetworkConfig(linear=4, linear_alpha=3.0, network_kwargs=ATTN),
    "lora_outside": NetworkConfig(
        linear=4,
        linear_alpha=3.0,
        network_kwargs=NetworkKwargs(include_patterns=[f"^transformer\\.{n}$" for n in OUTSIDE]),
    ),
    "locon_patch": NetworkConfig(
        type="locon", linear=4, network_kwargs=NetworkKwargs(include_patterns=["patch_embedding"])
    ),
    "lokr": NetworkConfig(type="lokr", lokr_full_rank=False, linear=2, linear_alpha=3.0),
    "loha": NetworkConfig(type="loha", linear=2, linear_alpha=1.0),
    "dora_in": NetworkConfig(type="dora", linear=4),
    "dora_out": NetworkConfig(type="dora", linear=4, network_kwargs=NetworkKwargs(wd_on_output=True)),
}


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return WanImageToVideoPipeline.from_pretrained(tiny_pipeline_dir("wan22_14b_i2v"))


def _trained(model, cfg: NetworkConfig) -> LoRANetwork:
    net = LoRANetwork(model, cfg, name="transformer", seed=1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.add_(noise * (0.05 * p.abs().mean() + 0.05) if name.endswith("dora_scale") else noise * 0.1)
    return net.apply().eval()


def _file(model, kind: str, layout: str, tmp_path):
    """(trained network, its file in `layout`, the trained prediction); the hooks are removed again."""
    net = _trained(model, CASES[kind])
    want = forward(model, transformer_inputs(model))
    path = tmp_path / f"{kind}_{layout}.safetensors"
    save_lora_file(path, net.to_lora_tensors(), {"step": "1"}, layout, torch.float32)
    net.remove()
    return net, path, want


DIFFUSERS_CASES = [
    ("lora_blocks", "comfyui", True),
    ("lora_attention", "comfyui", True),
    ("lora_outside", "comfyui", False),
    ("locon_patch", "comfyui", False),
    ("lokr", "comfyui", False),
    ("dora_in", "comfyui", False),
    ("lora_blocks", "kohya", True),
    ("lora_attention", "kohya", False),
    ("lora_outside", "diffusers", True),
    ("locon_patch", "diffusers", True),
    ("dora_out", "diffusers", True),
]


@pytest.mark.parametrize(("kind", "layout", "expected"), DIFFUSERS_CASES)
def test_diffusers_verdict_matches_its_real_loader(kind, layout, expected, pipe, tmp_path) -> None:
    model = pipe.transformer
    _net, path, want = _file(model, kind, layout, tmp_path)
    verdict = diffusers(shape_of(load_lora_file(path).modules, layout))
    assert verdict.loads is expected, verdict
    try:
        pipe.load_lora_weights(str(path))
        got = forward(model, transformer_inputs(model))
        loaded = torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    except (ValueError, KeyError, IndexError, RuntimeError):
        loaded = False
    finally:
        pipe.unload_lora_weights()
    assert loaded is expected, (
        f"{kind} in the {layout} layout: the verdict says {expected}, diffusers did {loaded}"
    )


def _comfy_names(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv3d):
            try:
                out[keymap.to_original(name)] = module.weight.detach()
            except KeyError:
                pass
    return out


@pytest.mark.parametrize("layout", ["comfyui", "kohya"])
@pytest.mark.parametrize("kind", ["lora_outside", "locon_patch", "lokr", "loha", "dora_in"])
def test_comfyui_rules_load_both_prefixed_layouts(kind, layout, pipe, tmp_path) -> None:
    model = copy.deepcopy(pipe.transformer)
    net, path, _ = _file(model, kind, layout, tmp_path)
    weights = {f"diffusion_model.{k}.weight": v for k, v in _comfy_names(model).items()}
    patched, unused = patched_weights(load_file(str(path)), weights)
    assert not unused and len(patched) == len(net.modules_by_name)
    for name, module in net.modules_by_name.items():
        key = f"diffusion_model.{keymap.to_original(name)}.weight"
        torch.testing.assert_close(patched[key] - weights[key], module.diff_weight(), atol=2e-6, rtol=1e-5)
    assert comfyui(shape_of(load_lora_file(path).modules, layout)).loads


@pytest.mark.parametrize("kind", ["lora_blocks", "lora_outside", "lokr", "loha"])
def test_musubi_rules_merge_the_kohya_layout(kind, pipe, tmp_path) -> None:
    model = copy.deepcopy(pipe.transformer)
    net, path, _ = _file(model, kind, "kohya", tmp_path)
    weights = {f"{k}.weight": v for k, v in _comfy_names(model).items()}  # musubi's DiT: original Wan names
    merged, unused = merged_weights(load_file(str(path)), weights)
    assert not unused and len(merged) == len(net.modules_by_name)
    for name, module in net.modules_by_name.items():
        key = f"{keymap.to_original(name)}.weight"
        torch.testing.assert_close(merged[key] - weights[key], module.diff_weight(), atol=2e-6, rtol=1e-5)
    assert musubi(shape_of(load_lora_file(path).modules, "kohya")).loads


def test_musubi_rules_merge_nothing_else(pipe, tmp_path) -> None:
    """The verdicts' 'no' for musubi-tuner: another layout merges nothing, a Conv3d fails, DoRA is dropped."""
    model = copy.deepcopy(pipe.transformer)
    weights = {f"{k}.weight": v for k, v in _comfy_names(model).items()}
    _, path, _ = _file(model, "lora_blocks", "comfyui", tmp_path)
    merged, unused = merged_weights(load_file(str(path)), weights)
    assert merged == {} and unused and not musubi(shape_of(load_lora_file(path).modules, "comfyui")).loads
    _, path, _ = _file(model, "locon_patch", "kohya", tmp_path)
    with pytest.raises(RuntimeError):
        merged_weights(load_file(str(path)), weights)
    assert not musubi(shape_of(load_lora_file(path).modules, "kohya")).loads
    _, path, _ = _file(model, "dora_in", "kohya", tmp_path)
    _, unused = merged_weights(load_file(str(path)), weights)
    assert unused and all(k.endswith("dora_scale") for k in unused)
    assert not musubi(shape_of(load_lora_file(path).modules, "kohya")).loads


def test_kohya_layout_round_trips_with_alpha(tmp_path, pipe) -> None:
    model = copy.deepcopy(pipe.transformer)
    net, path, _ = _file(model, "lora_outside", "kohya", tmp_path)
    raw = load_file(str(path))
    assert "lora_unet_head_head.alpha" in raw and "lora_unet_blocks_0_self_attn_q.lora_down.weight" in raw
    lora = load_lora_file(path)
    assert lora.layout == "kohya" and set(lora.modules) == set(net.modules_by_name)
    for name, t in lora.modules.items():
        assert t.alpha == 3.0
        torch.testing.assert_close(t.diff_weight(), net.modules_by_name[name].diff_weight())
