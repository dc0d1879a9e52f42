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


def model_input_and_target(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy latents in the model's `dtype`, velocity target in fp32). Mixing in fp32 first: in bf16 the
    coefficients (1 - t) and t round to steps of 2^-8, so near t = 1 the input would be noised at another t
    than the one the model is told (t = 0.999 became pure noise)."""
    x0, noise = x0.float(), noise.float()
    return noisy_latents(x0, noise, t).to(dtype), velocity_target(x0, noise)


def flow_matching_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE in fp32; with a mask (broadcastable weights, e.g. TI2V-5B's clean first frame = 0) the mean runs
    over the weighted elements only. `sample_weights` ([B], e.g. timestep_type weighted) multiply each
    sample's error without renormalising, as ai-toolkit multiplies its loss."""
    error = (prediction.float() - target.float()) ** 2
    if sample_weights is not None:
        error = error * _expand(sample_weights.to(error.device), error)
    if mask is None:
        return error.mean()
    weights = mask.to(error.dtype).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1e-12)


def combined_weights(*weights: torch.Tensor | None) -> torch.Tensor | None:
    """The product of per-sample loss weights ([B] each; None = all 1), e.g. timestep_type weighted's table
    weights and the batch's datasets[].loss_multiplier; None when none is given."""
    given = [w for w in weights if w is not None]
    if not given:
        return None
    product = given[0].float()
    for w in given[1:]:
        product = product.to(w.device) * w.float()
    return product
