"""Per-expert learning rates, automagic and LoRA+ on LoKr, LoHa and DoRA networks of a tiny Wan 2.2 pair."""

from __future__ import annotations

import copy

import pytest
import torch

from cadence.config.errors import ConfigError
from cadence.config.loader import load_config_dict
from cadence.config.schema import NetworkConfig, NetworkKwargs, TrainConfig
from cadence.models.tiny import TEXT_DIM, _transformer
from cadence.networks.lora import LoRANetwork
from cadence.optim import build_optimizer, build_param_groups
from cadence.optim.automagic import Automagic

TYPES = {
    "lokr": NetworkConfig(type="lokr", lokr_full_rank=False, linear=2, lokr_factor=4),
    "loha": NetworkConfig(type="loha", linear=2),
    "dora": NetworkConfig(type="dora", linear=2),
    "dokr": NetworkConfig(type="lokr", network_kwargs=NetworkKwargs(dora_wd=True)),
}


@pytest.fixture(scope="module")
def base_roots() -> dict[str, torch.nn.Module]:
    out = {}
    for index, name in enumerate(("high_noise", "low_noise")):
        torch.manual_seed(index)
        out[name] = _transformer("wan22_14b_i2v").requires_grad_(False)
    return out


def _loss(root: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, root.config.in_channels, 2, 4, 4, generator=g)
    text = torch.randn(1, 6, TEXT_DIM, generator=g)
    return (root(x, torch.tensor([500.0]), text, return_dict=False)[0] - 1.0).pow(2).mean()


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_per_expert_lrs_and_automagic_step_only_the_active_expert(base_roots, kind) -> None:
    roots = {name: copy.deepcopy(root) for name, root in base_roots.items()}
    nets = {
        name: LoRANetwork(root, TYPES[kind], name=name, seed=i + 1).apply()
        for i, (name, root) in enumerate(roots.items())
    }
    train = TrainConfig(
        optimizer="automagic", lr=1e-4, optimizer_params={"high_noise_lr": 4e-4, "low_noise_lr": 1e-4}
    )
    groups = build_param_groups(nets, train, None)
    assert [(g["expert"], g["lr"]) for g in groups] == [("high_noise", 4e-4), ("low_noise", 1e-4)]
    assert sum(len(g["params"]) for g in groups) == sum(len(n.trainable_parameters()) for n in nets.values())
    opt = build_optimizer(train, groups)
    assert isinstance(opt, Automagic)
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        _loss(roots["high_noise"]).backward()
        opt.step()
    moved = [
        not torch.equal(p, b)
        for p, b in zip(nets["high_noise"].parameters(), before["high_noise"], strict=True)
    ]
    assert all(moved), f"{kind}: automagic left {moved.count(False)} active parameters unchanged"
    assert all(
        torch.equal(p, b) for p, b in zip(nets["low_noise"].parameters(), before["low_noise"], strict=True)
    )


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_lora_plus_is_refused_where_it_has_no_meaning(kind) -> None:
    job = {
        "name": "j",
        "training_folder": "/tmp/x",
        "datasets": [{"folder_path": "/tmp/x"}],
        "model": {"name_or_path": "m", "arch": "wan22_14b_i2v"},
        "network": {"type": kind, "network_kwargs": {"loraplus_lr_ratio": 16}},
    }
    with pytest.raises(ConfigError) as err:
        load_config_dict(job)
    assert "no up/down pair" in dict(err.value.issues)["network.network_kwargs.loraplus_lr_ratio"]


def test_lora_plus_puts_dora_magnitudes_in_the_up_group(base_roots) -> None:
    nets = {
        "high_noise": LoRANetwork(copy.deepcopy(base_roots["high_noise"]), TYPES["dora"], name="high_noise")
    }
    groups = build_param_groups(nets, TrainConfig(lr=1e-4), 16.0)
    assert [(g["name"], g["lr"]) for g in groups] == [("high_noise", 1e-4), ("high_noise_up", 1.6e-3)]
    up = {id(p) for p in groups[1]["params"]}
    assert all(id(m.dora_scale) in up and id(m.up) in up for m in nets["high_noise"].modules_by_name.values())


@pytest.mark.parametrize(
    ("network", "extra", "path", "words"),
    [
        (
            {"type": "dora"},
            {"train": {"adapter_dtype": "bf16", "optimizer": "automagic"}},
            "train.adapter_dtype",
            "row norm",
        ),
        ({"type": "dora", "dropout": 0.1}, {}, "network.dropout", "DoRA rebuilds"),
        (
            {"type": "lora", "network_kwargs": {"dora_wd": True, "rank_dropout": 0.1}},
            {},
            "network.network_kwargs.rank_dropout",
            "DoRA",
        ),
        ({"type": "dora"}, {"model": {"quantize": True}}, "network.type", "quantized base"),
        ({"type": "lokr"}, {"save": {"format": "diffusers"}}, "save.format", "no diffusers layout"),
        ({"type": "dora"}, {"save": {"format": "diffusers"}}, "save.format", "wd_on_output: true"),
        (
            {"type": "lokr", "lokr_full_rank": True, "alpha_schedule": {"enabled": True, "preset": "video"}},
            {},
            "network.alpha_schedule",
            "lokr_full_rank",
        ),
    ],
)
def test_unsupported_combinations_are_config_errors_at_the_key(network, extra, path, words) -> None:
    job = {
        "name": "j",
        "training_folder": "/tmp/x",
        "datasets": [{"folder_path": "/tmp/x"}],
        "model": {"name_or_path": "m", "arch": "wan22_14b_i2v", **extra.get("model", {})},
        "network": network,
        "train": extra.get("train", {}),
        "save": extra.get("save", {}),
    }
    with pytest.raises(ConfigError) as err:
        load_config_dict(job)
    issues = dict(err.value.issues)
    assert path in issues and words in issues[path], issues
