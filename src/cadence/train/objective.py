"""Flow-matching objective exactly as diffusers' Wan pipelines use it.

x_t = (1 - t) * x0 + t * noise, the model sees timestep 1000 * t and predicts the velocity noise - x0.
Loss is the mean squared error in fp32.
"""

from __future__ import annotations

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Interpolate between data (t=0) and noise (t=1)."""
    tt = _expand(t, x0)
    return (1.0 - tt) * x0 + tt * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_matching_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(prediction.float(), target.float())
