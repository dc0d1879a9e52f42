"""What the image families (FLUX.1, Qwen-Image, Z-Image) share behind the adapter contract: one transformer
("main"), no I2V conditioning, a one-frame "clip" per image, samples as PNG, and the 2-D AutoencoderKL latent
normalisation (shift, then scale) that FLUX.1 and Z-Image both use.

Latents use the VAE posterior's mode, as for Wan: deterministic, so latent caches are reproducible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cadence.models.base import ModelAdapter, experts_for
from cadence.models.components import frozen, load_component
from cadence.models.family import ModelFamily

log = logging.getLogger(__name__)


def load_parts(
    folder: Path,
    device,
    dtype,
    low_vram: bool,
    text_encoder: str,
    vae: str,
    transformer: str,
    files: dict[str, Path] | None = None,
) -> dict:
    """The usual components of an image family's folder, frozen: tokenizer, text encoder and transformer in
    the training dtype (on the host with low_vram), the VAE in fp32 (cached latents without bf16 rounding),
    the flow-matching scheduler; `text_encoder` / `vae` / `transformer` name their classes; the transformer
    from its single-file checkpoint when `files` has one."""
    host = torch.device("cpu") if low_vram else device
    single = (files or {}).get("transformer")
    return {
        "tokenizer": load_component("AutoTokenizer", folder, "tokenizer"),
        "text_encoder": frozen(load_component(text_encoder, folder, "text_encoder", dtype=dtype), host),
        "vae": frozen(load_component(vae, folder, "vae", torch_dtype=torch.float32), device),
        "scheduler": load_component("FlowMatchEulerDiscreteScheduler", folder, "scheduler"),
        "transformer": frozen(
            load_component(transformer, folder, "transformer", single, torch_dtype=dtype), host
        ),
    }


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

    def sample_call(self, spec, generator: torch.Generator, **family) -> dict:
        """The pipeline call arguments every image family shares, plus the family's own (`family`)."""
        return dict(
            height=spec.height,
            width=spec.width,
            num_inference_steps=spec.sample_steps,
            generator=generator,
            output_type="np",
            max_sequence_length=self.text_len,
            **family,
        )

    def pipeline_components(self, names: tuple[str, ...]) -> dict:
        return {n: self.components.get(n) for n in names}


@dataclass
class ImageFamily(ModelFamily):
    """A family with one arch per pipeline class and the usual components (`load_parts`): detection by the
    folder's pipeline class, loading into `adapter_class`, the training adapter noted when the family takes one."""

    pipeline: str = ""  # model_index.json's _class_name
    classes: tuple[str, str, str] = ("", "", "")  # text encoder, VAE, transformer class names
    adapter_class: type | None = None
    card: Any = None  # cadence.models.card_usage.ArchUsage
    tiny: Callable[[Path, str, int], Path] | None = None
    scheduler_shift: bool = True  # the image pipelines' schedulers (dynamic or fixed shift)

    def detect(self, folder: Path, index: dict[str, Any]) -> str | None:
        return next(iter(self.archs)) if str(index.get("_class_name", "")) == self.pipeline else None

    def required_components(self, arch: str) -> tuple[str, ...]:
        return ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")

    def load(
        self,
        folder: Path,
        arch: str,
        model_cfg: Any,
        device: Any,
        dtype: Any,
        model_id: str,
        files: dict[str, Path] | None = None,
    ):
        text_encoder, vae, transformer = self.classes
        parts = load_parts(folder, device, dtype, model_cfg.low_vram, text_encoder, vae, transformer, files)
        log.info("loaded %s from %s", arch, folder)
        adapter = self.adapter_class(arch, parts, device, dtype, model_id, model_cfg.low_vram)
        return self.note_training_adapter(adapter, model_cfg)

    def note_training_adapter(self, adapter: ImageAdapter, model_cfg: Any) -> ImageAdapter:
        """`assistant_lora_path`: resolved now (a hub file is fetched), hooked in after quantization."""
        if self.training_adapter and model_cfg.assistant_lora_path:
            from cadence.models.training_adapter import resolve_training_adapter

            adapter.pending_training_adapters["main"] = resolve_training_adapter(
                model_cfg.assistant_lora_path
            )
        return adapter

    def usage(self, arch: str):
        return self.card

    def write_tiny(self, path: Path, arch: str, seed: int = 0) -> Path:
        return self.tiny(path, arch, seed)
