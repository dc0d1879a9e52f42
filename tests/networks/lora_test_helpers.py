"""Helpers shared by the LoRA tests (a module, not conftest, so the import name is unique)."""

from __future__ import annotations

import torch


def transformer_inputs(
    model: torch.nn.Module, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed (latents, timestep, text) for one forward of `model`."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g)
    t = torch.tensor([700.0])
    text = torch.randn(1, 6, cfg.text_dim, generator=g)
    return x, t, text


def forward(model: torch.nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]
