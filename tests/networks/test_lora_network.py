"""LoRANetwork: hook injection, runtime alpha, dropouts, parameter groups, exact tensor round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lora_test_helpers import forward, transformer_inputs
from torch import nn

from cadence.config.schema import NetworkConfig
from cadence.networks import LoRANetwork


class Toy(nn.Module):
    """Smallest root with Wan-like names: one block Linear and a strided Conv3d patch embedding."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 6)]).to(dtype)
        self.patch_embedding = nn.Conv3d(2, 4, (1, 2, 2), stride=(1, 2, 2)).to(dtype)


def _cfg(**kwargs) -> NetworkConfig:
    return NetworkConfig(**{"linear": 4, "linear_alpha": 2.0, **kwargs})


def _randomize_up(net: LoRANetwork, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules_by_name.values():
            m.up.copy_(torch.randn(m.up.shape, generator=g))


def test_zero_init_keeps_output_and_remove_restores(transformer) -> None:
    inputs = transformer_inputs(transformer)
    base = forward(transformer, inputs)
    state_keys = list(transformer.state_dict())
    net = LoRANetwork(transformer, _cfg(), name="high_noise", seed=0).apply().apply()  # idempotent
    assert torch.equal(forward(transformer, inputs), base)  # up starts at zero
    _randomize_up(net)
    assert not torch.allclose(forward(transformer, inputs), base)
    assert list(transformer.state_dict()) == state_keys  # base tree untouched
    net.remove()
    assert torch.equal(forward(transformer, inputs), base)


def test_same_seed_same_network_other_seed_differs(transformer) -> None:
    a = LoRANetwork(transformer, _cfg(), name="a", seed=7).to_lora_tensors()
    b = LoRANetwork(transformer, _cfg(), name="b", seed=7).to_lora_tensors()
    c = LoRANetwork(transformer, _cfg(), name="c", seed=8).to_lora_tensors()
    assert all(torch.equal(a[n].down, b[n].down) for n in a)
    assert not all(torch.equal(a[n].down, c[n].down) for n in a)
    assert all(torch.count_nonzero(t.up) == 0 for t in a.values())


def test_delta_is_up_down_times_multiplier_alpha_over_rank() -> None:
    toy = Toy()
    net = LoRANetwork(toy, _cfg(), name="n").apply()
    _randomize_up(net)
    lin, lora = toy.blocks[0], net.modules_by_name["blocks.0"]
    x = torch.randn(3, 5, 8)
    direct = F.linear(x, lin.weight, lin.bias) + x @ lora.down.T @ lora.up.T * (2.0 / 4)
    torch.testing.assert_close(toy.blocks[0](x), direct)
    net.set_alpha(linear=8.0)  # runtime alpha: scale = 8 / 4
    assert net.linear_alpha == 8.0
    torch.testing.assert_close(lin(x) - F.linear(x, lin.weight, lin.bias), x @ lora.down.T @ lora.up.T * 2.0)
    net.multiplier = 0.5
    torch.testing.assert_close(lin(x) - F.linear(x, lin.weight, lin.bias), x @ lora.down.T @ lora.up.T * 1.0)
    net.multiplier = 0.0
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    net.multiplier, net.enabled = 1.0, False
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))


def test_conv_delta_matches_conv_with_delta_weight() -> None:
    toy = Toy()
    net = LoRANetwork(
        toy, _cfg(conv=2, conv_alpha=1.0, network_kwargs={"include_patterns": ["patch_embedding"]}), name="n"
    ).apply()
    assert net.has_conv and net.has_linear and net.conv_alpha == 1.0
    _randomize_up(net)
    conv, lora = toy.patch_embedding, net.modules_by_name["patch_embedding"]
    x = torch.randn(1, 2, 3, 4, 6)
    delta_w = (lora.up.flatten(1) @ lora.down.flatten(1)).view_as(conv.weight) * (1.0 / 2)
    direct = F.conv3d(x, conv.weight + delta_w, conv.bias, stride=conv.stride)
    torch.testing.assert_close(conv(x), direct, atol=1e-5, rtol=1e-5)
    net.set_alpha(conv=4.0)
    assert net.conv_alpha == 4.0 and net.linear_alpha == 2.0


def test_fp32_masters_on_bf16_base_and_gradients_reach_only_lora() -> None:
    toy = Toy(torch.bfloat16).requires_grad_(False)
    net = LoRANetwork(toy, _cfg(), name="n").apply()
    _randomize_up(net)
    assert all(p.dtype == torch.float32 for p in net.trainable_parameters())
    out = toy.blocks[0](torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.trainable_parameters())
    assert toy.blocks[0].weight.grad is None


def test_dropouts_only_in_training_and_reproducible_from_global_rng() -> None:
    toy = Toy()
    net = LoRANetwork(toy, _cfg(dropout=0.3, network_kwargs={"rank_dropout": 0.5}), name="n").apply()
    _randomize_up(net)
    x = torch.randn(4, 8)
    net.eval()
    assert torch.equal(toy.blocks[0](x), toy.blocks[0](x))
    net.train()
    torch.manual_seed(11)
    first = toy.blocks[0](x)
    torch.manual_seed(11)
    again = toy.blocks[0](x)
    assert torch.equal(first, again)
    assert not torch.equal(toy.blocks[0](x), first)  # the RNG moved on
    net.eval()
    assert not torch.equal(toy.blocks[0](x), first)


def test_module_dropout_skips_whole_module_in_training() -> None:
    toy = Toy()
    net = LoRANetwork(toy, _cfg(network_kwargs={"module_dropout": 0.5}), name="n").apply()
    _randomize_up(net)
    lin, x = toy.blocks[0], torch.randn(2, 8)
    base = F.linear(x, lin.weight, lin.bias)
    torch.manual_seed(0)
    net.train()
    skipped = [torch.equal(lin(x), base) for _ in range(40)]
    assert 5 < sum(skipped) < 35
    net.eval()
    assert not any(torch.equal(lin(x), base) for _ in range(5))


def test_param_groups_plain_and_loraplus() -> None:
    net = LoRANetwork(Toy(), _cfg(), name="high_noise")
    (group,) = net.param_groups(1e-4, None)
    assert group["name"] == "high_noise" and group["lr"] == 1e-4 and len(group["params"]) == 2
    down, up = net.param_groups(1e-4, 16.0)
    assert (down["name"], down["lr"]) == ("high_noise.down", 1e-4)
    assert up["name"] == "high_noise.up" and up["lr"] == pytest.approx(1.6e-3)
    lora = net.modules_by_name["blocks.0"]
    assert down["params"] == [lora.down] and up["params"] == [lora.up]


def test_lora_tensors_round_trip_exactly_and_mismatch_is_an_error() -> None:
    src = LoRANetwork(Toy(), _cfg(), name="a", seed=1)
    _randomize_up(src)
    src.set_alpha(linear=3.0)
    dst = LoRANetwork(Toy(), _cfg(), name="b", seed=2)
    dst.load_lora_tensors(src.to_lora_tensors())
    for name, t in dst.to_lora_tensors().items():
        s = src.to_lora_tensors()[name]
        assert torch.equal(t.down, s.down) and torch.equal(t.up, s.up) and t.alpha == 3.0
    other_rank = LoRANetwork(Toy(), _cfg(linear=8), name="c")
    with pytest.raises(ValueError, match="blocks.0: lora_down.weight: shape"):
        other_rank.load_lora_tensors(src.to_lora_tensors())
    with pytest.raises(ValueError, match="missing"):
        dst.load_lora_tensors({})


def test_two_experts_get_independent_networks() -> None:
    from cadence.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("wan22_14b_i2v", seed=0)
    high = LoRANetwork(pipe.transformer, _cfg(), name="high_noise", seed=0).apply()
    low = LoRANetwork(pipe.transformer_2, _cfg(), name="low_noise", seed=1).apply()
    assert not {id(p) for p in high.parameters()} & {id(p) for p in low.parameters()}
    inputs = transformer_inputs(pipe.transformer_2)
    before = forward(pipe.transformer_2, inputs)
    _randomize_up(high)
    assert torch.equal(forward(pipe.transformer_2, inputs), before)


def test_dropout_acts_on_the_rank_features() -> None:
    """The seed trainer drops entries of lora_down(x), not of x: masks have the rank's shape."""
    toy = Toy()
    net = LoRANetwork(toy, _cfg(dropout=0.5), name="n").apply()
    _randomize_up(net)
    shapes = []
    original = torch.nn.functional.dropout

    def spy(t, p=0.5, training=True, inplace=False):
        shapes.append(tuple(t.shape))
        return original(t, p, training, inplace)

    torch.nn.functional.dropout = spy
    try:
        toy.blocks[0](torch.randn(4, 8))
    finally:
        torch.nn.functional.dropout = original
    lora = net.modules_by_name["blocks.0"]
    assert shapes == [(4, lora.rank)]
