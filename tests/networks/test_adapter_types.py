"""LoKr, LoHa, LoCon and DoRA on the tiny Wan transformer: what the hook applies, what the file holds, what
ComfyUI's rules rebuild from the file, and that alpha is the strength each type really applies."""

from __future__ import annotations

import copy

import pytest
import torch
from comfy_rules import patched_weights
from lora_test_helpers import forward, transformer_inputs
from safetensors.torch import load_file

from cadence.config.schema import NetworkConfig, NetworkKwargs
from cadence.models.tiny import build_tiny_pipeline
from cadence.networks import LoRANetwork, keymap, load_lora_file, save_lora_file
from cadence.networks.formats import layout_problems

CONV = NetworkKwargs(include_patterns=["patch_embedding"])
TYPES = {
    "lora": NetworkConfig(linear=4, linear_alpha=3.0),
    "locon": NetworkConfig(type="locon", linear=4, linear_alpha=2.0, network_kwargs=CONV),
    "lokr_full": NetworkConfig(type="lokr"),
    "lokr_rank": NetworkConfig(type="lokr", lokr_full_rank=False, linear=2, linear_alpha=3.0, lokr_factor=4),
    "loha": NetworkConfig(type="loha", linear=3, linear_alpha=1.5),
    "dora": NetworkConfig(type="dora", linear=4, linear_alpha=2.0),
    "dora_out": NetworkConfig(type="dora", linear=4, network_kwargs=NetworkKwargs(wd_on_output=True)),
    "dora_conv": NetworkConfig(type="dora", linear=4, conv=2, network_kwargs=CONV),
    "dokr": NetworkConfig(
        type="lokr", lokr_full_rank=False, linear=2, network_kwargs=NetworkKwargs(dora_wd=True)
    ),
    "doha": NetworkConfig(type="loha", linear=2, network_kwargs=NetworkKwargs(dora_wd=True)),
}


@pytest.fixture(scope="module")
def base_model():
    return build_tiny_pipeline("wan22_14b_i2v", seed=0).transformer


def _trained(model, cfg: NetworkConfig, seed: int = 3) -> LoRANetwork:
    """A network whose every parameter moved away from its (zero-delta) initialisation."""
    net = LoRANetwork(model, cfg, name="high_noise", seed=1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.add_(noise * (0.05 * p.abs().mean() + 0.05) if name.endswith("dora_scale") else noise * 0.1)
    return net.apply().eval()


def _merged(model, tensors) -> torch.nn.Module:
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, t in tensors.items():
            layer = merged.get_submodule(name)
            layer.weight.add_(t.diff_weight().to(layer.weight.dtype))
    return merged


def _comfy_weights(model) -> dict[str, torch.Tensor]:
    """The base weights under ComfyUI's names (`diffusion_model.<original Wan name>.weight`)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv3d):
            try:
                out[f"diffusion_model.{keymap.to_original(name)}.weight"] = module.weight.detach()
            except KeyError:
                pass
    return out


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_hook_equals_merged_weights_and_file_round_trip(kind, base_model, tmp_path) -> None:
    cfg = TYPES[kind]
    model = copy.deepcopy(base_model)
    inputs = transformer_inputs(model)
    before = forward(model, inputs)
    net = _trained(model, cfg)
    hooked = forward(model, inputs)
    assert (hooked - before).abs().max() > 1e-3, "the adapter must change the prediction"
    tensors = net.to_lora_tensors()
    net.remove()
    torch.testing.assert_close(forward(_merged(model, tensors), inputs), hooked, atol=2e-6, rtol=1e-5)
    # file -> a fresh network built from the file alone gives the same prediction
    path = tmp_path / f"{kind}.safetensors"
    save_lora_file(path, tensors, {"step": "5"}, "comfyui", torch.float32)
    lora = load_lora_file(path)
    assert lora.algos == [cfg.algo] and lora.metadata["algo"] == cfg.algo
    again = LoRANetwork.from_tensors(model, lora.modules, "high_noise").apply().eval()
    assert torch.equal(forward(model, inputs), hooked)
    again.remove()
    if cfg.uses_dora:
        assert lora.metadata["dora"] == ("output" if cfg.network_kwargs.wd_on_output else "input")


@pytest.mark.parametrize("kind", sorted(set(TYPES) - {"dora_out"}))
def test_comfyui_rules_rebuild_the_trained_delta_from_the_file(kind, base_model, tmp_path) -> None:
    model = copy.deepcopy(base_model)
    net = _trained(model, TYPES[kind])
    path = tmp_path / f"{kind}.safetensors"
    save_lora_file(path, net.to_lora_tensors(), {}, "comfyui", torch.float32)
    weights = _comfy_weights(model)
    patched, unused = patched_weights(load_file(str(path)), weights)
    assert not unused, f"keys ComfyUI would not load: {sorted(unused)[:3]}"
    assert len(patched) == len(net.modules_by_name)
    for name, module in net.modules_by_name.items():
        key = f"diffusion_model.{keymap.to_original(name)}.weight"
        comfy_delta = patched[key] - weights[key].float()
        torch.testing.assert_close(comfy_delta, module.diff_weight(), atol=2e-6, rtol=1e-5)


def test_comfyui_output_axis_dora_uses_the_base_norm(base_model, tmp_path) -> None:
    """Why Cadence's DoRA default is the input axis: ComfyUI normalises an output-axis dora_scale by the base
    weight's row norms, so such a file (PEFT's and ai-toolkit's axis) loads slightly off in ComfyUI."""
    model = copy.deepcopy(base_model)
    net = _trained(model, TYPES["dora_out"])
    path = tmp_path / "dora_out.safetensors"
    save_lora_file(path, net.to_lora_tensors(), {}, "comfyui", torch.float32)
    weights = _comfy_weights(model)
    patched, _ = patched_weights(load_file(str(path)), weights)
    name, module = next(iter(net.modules_by_name.items()))
    key = f"diffusion_model.{keymap.to_original(name)}.weight"
    assert not torch.allclose(patched[key] - weights[key], module.diff_weight(), atol=1e-4)


@pytest.mark.parametrize("kind", ["lora", "lokr_rank", "loha", "locon"])
def test_alpha_is_the_strength_the_module_applies(kind, base_model) -> None:
    """Doubling alpha doubles every module's delta (scale = alpha / rank, read at every forward)."""
    model = copy.deepcopy(base_model)
    net = _trained(model, TYPES[kind])
    first = {n: m.diff_weight() for n, m in net.modules_by_name.items()}
    net.set_alpha(linear=2 * net.linear_alpha, conv=2 * net.conv_alpha if net.has_conv else None)
    for name, module in net.modules_by_name.items():
        torch.testing.assert_close(module.diff_weight(), 2 * first[name], atol=1e-6, rtol=1e-5)
    assert net.scaled_kinds == ({"linear", "conv"} if kind == "locon" else {"linear"})


def test_alpha_changes_dora_and_not_a_full_matrix_lokr(base_model) -> None:
    model = copy.deepcopy(base_model)
    inputs = transformer_inputs(model)
    net = _trained(model, TYPES["dora"])
    before = forward(model, inputs)
    net.set_alpha(linear=4 * net.linear_alpha)
    assert (forward(model, inputs) - before).abs().max() > 1e-4
    net.remove()
    full = _trained(model, TYPES["lokr_full"])
    assert full.linear_alpha is None and full.scaled_kinds == set()
    before = forward(model, inputs)
    full.set_alpha(linear=64.0)
    assert torch.equal(forward(model, inputs), before)
    assert all(t.alpha is None for t in full.to_lora_tensors().values())


def test_lokr_factor_splits_and_rank_rule(base_model) -> None:
    net = LoRANetwork(copy.deepcopy(base_model), TYPES["lokr_rank"], name="x")
    q = net.modules_by_name["blocks.0.attn1.to_q"]  # 24 x 24 with factor 4 -> w1 4x4, w2 6x6 of rank 2
    assert tuple(q.lokr_w1.shape) == (4, 4) and tuple(q.lokr_w2_a.shape) == (6, 2) and q.rank == 2
    big = NetworkConfig(type="lokr", lokr_full_rank=False, linear=3, lokr_factor=4)
    q = LoRANetwork(copy.deepcopy(base_model), big, name="x").modules_by_name["blocks.0.attn1.to_q"]
    assert q.rank is None and tuple(q.lokr_w2.shape) == (6, 6)  # rank >= max(6, 6) / 2: full, as LyCORIS


def test_parameter_counts_and_lora_plus_roles(base_model) -> None:
    counts = {
        k: sum(p.numel() for p in LoRANetwork(base_model, cfg, name="x").parameters())
        for k, cfg in TYPES.items()
    }
    assert counts["loha"] == 2 * sum(
        p.numel() for p in LoRANetwork(base_model, NetworkConfig(linear=3), name="x").parameters()
    )
    assert counts["lokr_full"] < counts["lora"]
    dora = LoRANetwork(base_model, TYPES["dora"], name="x")
    groups = dora.param_groups(1e-4, loraplus_lr_ratio=16)
    ups = {id(p) for p in groups[1]["params"]}
    assert all(id(m.up) in ups and id(m.dora_scale) in ups for m in dora.modules_by_name.values())
    with pytest.raises(ValueError, match="LoRA\\+"):
        LoRANetwork(base_model, TYPES["loha"], name="x").param_groups(1e-4, loraplus_lr_ratio=16)


def test_layouts_refuse_what_diffusers_cannot_load(base_model) -> None:
    for kind in ("lokr_rank", "loha", "dora"):
        tensors = LoRANetwork(base_model, TYPES[kind], name="x").to_lora_tensors()
        assert layout_problems(tensors, "diffusers") and not layout_problems(tensors, "comfyui")
    tensors = LoRANetwork(base_model, TYPES["dora_out"], name="x").to_lora_tensors()
    assert not layout_problems(tensors, "diffusers")


def test_initial_delta_is_zero_for_every_type(base_model) -> None:
    model = copy.deepcopy(base_model)
    inputs = transformer_inputs(model)
    before = forward(model, inputs)
    for cfg in TYPES.values():
        net = LoRANetwork(model, cfg, name="x", seed=0).apply().eval()
        torch.testing.assert_close(forward(model, inputs), before, atol=1e-6, rtol=0)
        net.remove()


def test_magnitude_is_the_real_weight_change(base_model) -> None:
    """|ΔW| (metrics, health) of a live DoRA network includes the magnitude rescaling; its factors alone differ."""
    from cadence.networks.magnitude import summarize

    net = _trained(copy.deepcopy(base_model), TYPES["dora"])
    live = summarize(net.to_lora_tensors())
    for name, module in net.modules_by_name.items():
        real = float(module.diff_weight().abs().mean())
        assert live.per_module[name] == pytest.approx(real, rel=1e-6)
        assert real != pytest.approx(float(module.factor_delta().detach().abs().mean()), rel=1e-3)
    loha = _trained(copy.deepcopy(base_model), TYPES["loha"])
    for name, value in summarize(loha.to_lora_tensors()).per_module.items():
        assert value == pytest.approx(float(loha.modules_by_name[name].diff_weight().abs().mean()), rel=1e-6)
