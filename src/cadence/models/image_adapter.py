"""What the image families (FLUX.1, Qwen-Image, Z-Image) share behind the adapter contract: one transformer
("main"), no I2V conditioning, a one-frame "clip" per image, samples as PNG, and the 2-D AutoencoderKL latent
normalisation (shift, then scale) that FLUX.1 and Z-Image both use.

Latents use the VAE posterior's mode, as for Wan: deterministic, so latent caches are reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cadence.models.base import ModelAdapter, experts_for


class ImageAdapter(ModelAdapter):
    output_kind = "image"

    def __init__(self, arch: str, components: dict, device, dtype, model_id: str, low_vram: bool) -> None:
        self.arch = arch
        self.components = components
        self.device = device
        self.dtype = dtype
        self.model_id = model_id
        self.low_vram = low_vram
        self.recovery_adapters = {}
        self.training_adapters = {}
        self.pending_training_adapters: dict[str, Path] = {}
        self.boundary = None
        self.experts = experts_for(False, None)
        self.is_i2v = False
        self.temporal_multiple = 1
        self.native_fps = 0
        self.vae_scale = self.vae_scale_factor()
        self.spatial_multiple = self.vae_scale * 2  # every family here packs or patches latents 2x2

    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.components["vae"].config.block_out_channels) - 1)

    def transformer(self, expert: str) -> torch.nn.Module:
        return self.components[self.expert(expert).component]

    def encode_condition(self, first_frame: torch.Tensor, num_frames: int) -> dict[str, torch.Tensor]:
        return {}

    def image_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1, H, W] (the dataset's one-frame clip) checked against the model's size multiple."""
        if pixels.ndim != 5 or pixels.shape[2] != 1:
            raise ValueError(f"{self.arch} is an image model; got pixels of shape {tuple(pixels.shape)}")
        height, width = pixels.shape[-2:]
        if height % self.spatial_multiple or width % self.spatial_multiple:
            raise ValueError(
                f"image size {width}x{height} is not a multiple of {self.spatial_multiple} ({self.arch})"
            )
        return pixels

    @torch.no_grad()
    def shifted_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """AutoencoderKL latents as FLUX/Z-Image pipelines expect them: (mode - shift_factor) * scaling_factor,
        [B, C, H/8, W/8] fp32 (their pipelines decode latents / scaling_factor + shift_factor)."""
        vae = self.components["vae"]
        x = self.image_pixels(pixels)[:, :, 0].to(device=next(vae.parameters()).device, dtype=vae.dtype)
        latents = vae.encode(x).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return latents.to(device=self.device, dtype=torch.float32)

    def timestep_shift(self, latents_shape: torch.Size) -> float | None:
        """exp(mu) of the pipelines' calculate_shift at this latent size (2x2 patches), with the model's own
        scheduler config: the shift its sampler applies (FLUX.1-dev, Qwen-Image); the fixed shift of a scheduler
        without dynamic shifting (FLUX.1-schnell: 1, Z-Image: 3)."""
        config = self.base_scheduler().config
        if not config.get("use_dynamic_shifting"):
            return float(config.get("shift") or 1.0)
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        tokens = (latents_shape[-2] // 2) * (latents_shape[-1] // 2)
        mu = calculate_shift(
            tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return math.exp(mu)

    def pipeline_components(self, names: tuple[str, ...]) -> dict:
        return {n: self.components.get(n) for n in names}
