"""Tiny Wan 2.2 I2V A14B transformer and a few-step LoRA training loop shared by the perf tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cadence.config.schema import NetworkConfig
from cadence.models.tiny import write_tiny_model
from cadence.networks.lora import LoRANetwork


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("perf_tiny") / "wan22_14b_i2v", "wan22_14b_i2v", seed=0)


@pytest.fixture
def load_transformer(tiny_folder: Path) -> Callable[[], torch.nn.Module]:
    from diffusers import WanTransformer3DModel

    def load() -> torch.nn.Module:
        model = WanTransformer3DModel.from_pretrained(str(tiny_folder / "transformer"), local_files_only=True)
        return model.requires_grad_(False).train()

    return load


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 36, 3, 8, 8, generator=g),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 16, 32, generator=g),
        "target": torch.randn(1, 16, 3, 8, 8, generator=g),
    }


def make_network(model: torch.nn.Module) -> LoRANetwork:
    return LoRANetwork(model, NetworkConfig(linear=4, linear_alpha=4), name="low_noise", seed=7).apply()


def train(
    model: torch.nn.Module, net: LoRANetwork, steps: int = 3, lr: float = 1e-2
) -> tuple[list[float], dict]:
    """A few AdamW steps on fixed synthetic batches; returns the losses and the final LoRA weights."""
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=lr)
    losses = []
    for step in range(steps):
        b = batch(step)
        out = model(
            hidden_states=b["hidden_states"],
            timestep=b["timestep"],
            encoder_hidden_states=b["encoder_hidden_states"],
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(out.float(), b["target"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone().float() for k, v in net.state_dict().items()}


def max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-12)) for k in b)


@pytest.fixture
def baseline(load_transformer):
    """Losses and LoRA weights of the plain run (no option), computed once per test."""
    model = load_transformer()
    return train(model, make_network(model))


def update_ratio(weights: dict, base: dict, load_transformer) -> float:
    """||weights - base|| / ||base - init||: how far an option moved training, relative to training's own move."""
    model = load_transformer()
    init = {k: v.detach().float() for k, v in make_network(model).state_dict().items()}
    diff = sum(float(((weights[k] - base[k]) ** 2).sum()) for k in base) ** 0.5
    update = sum(float(((base[k] - init[k]) ** 2).sum()) for k in base) ** 0.5
    return diff / update
