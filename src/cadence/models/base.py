"""The model-adapter contract: what the trainer may ask of a model family (see docs/design.md).

Generic code (data caches, the train step, sampling) talks only to `ModelAdapter`; everything that depends
on a family's layout (which experts exist, how conditioning and text tensors are built, which pipeline
samples) lives behind it.

A prompt's text embedding is a tensor (Wan: T5 states [L, D]) or a dict of tensors when a family needs more
than one (FLUX: T5 states and the pooled CLIP vector; Qwen-Image: states and mask). Generic code never looks
inside: it caches what `encode_prompts` returns, hands lists of them to `pad_text`, and the batch it gets
back to `predict` (`move_text` moves either form).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

import torch

TextEmbedding = Union[torch.Tensor, dict[str, torch.Tensor]]  # noqa: UP007 - a runtime alias


def move_text(text: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """A text embedding (tensor, dict of tensors or list of tensors) on `device`; floating-point tensors in
    `dtype` (masks and lengths keep theirs)."""
    if isinstance(text, dict):
        return {k: move_text(v, device, dtype) for k, v in text.items()}
    if isinstance(text, (list, tuple)):
        return type(text)(move_text(v, device, dtype) for v in text)
    if not isinstance(text, torch.Tensor):
        return text
    return text.to(device=device, dtype=dtype if dtype is not None and text.is_floating_point() else None)


@dataclass(frozen=True)
class CacheIdentity:
    """What a latent cache entry is made from, on the model side: the model (id + encoder digest), the folder
    name entries live under (the arch) and whether items carry I2V conditioning."""

    model_id: str
    namespace: str
    conditions: bool


class ModelLoadError(Exception):
    """A model folder or hub id cannot be used; the message names the path/key and what to do."""


class ArchMismatchError(ModelLoadError):
    """`model.arch` in the config disagrees with what the model folder contains."""


@dataclass(frozen=True)
class ExpertSpec:
    """One denoiser of the model and the slice of noise levels it owns."""

    name: str  # "high_noise" | "low_noise" | "main" (single-expert models)
    component: str  # diffusers pipeline component: "transformer" | "transformer_2"
    t_low: float  # t range in [0, 1] (t = sigma; model timestep = 1000 * t)
    t_high: float  # high_noise: [boundary, 1]; low_noise: [0, boundary); main: [0, 1]

    def contains(self, t: float) -> bool:
        """True when noise level `t` belongs to this expert (upper end closed only at t = 1)."""
        if self.t_high >= 1.0:
            return self.t_low <= t <= 1.0
        return self.t_low <= t < self.t_high


def experts_for(two_experts: bool, boundary: float | None) -> tuple[ExpertSpec, ...]:
    """Expert table: high_noise first, as the pipeline's `transformer` runs first during sampling."""
    if not two_experts:
        return (ExpertSpec("main", "transformer", 0.0, 1.0),)
    if boundary is None or not 0.0 < boundary < 1.0:
        raise ModelLoadError(f"a two-expert model needs a boundary in (0, 1), got {boundary!r}")
    return (
        ExpertSpec("high_noise", "transformer", boundary, 1.0),
        ExpertSpec("low_noise", "transformer_2", 0.0, boundary),
    )


class ModelAdapter(ABC):
    """Family-independent view of a loaded diffusion model (video or image)."""

    arch: str
    experts: tuple[ExpertSpec, ...]
    boundary: float | None
    spatial_multiple: int
    temporal_multiple: int  # 1 for image models
    native_fps: int  # 0 for image models
    is_i2v: bool
    model_id: str
    text_len: int
    output_kind: str = "video"  # "video" (mp4 + webp + png samples) | "image" (png samples)
    device: torch.device
    dtype: torch.dtype
    components: dict
    recovery_adapters: dict  # expert -> frozen accuracy-recovery network (filled by perf.apply_quantization)
    training_adapters: dict  # expert -> frozen training adapter (assistant_lora_path): on in training only

    def expert(self, name: str) -> ExpertSpec:
        """The ExpertSpec called `name`; a clear error lists the valid names."""
        for spec in self.experts:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown expert {name!r}; this model has {[e.name for e in self.experts]}")

    def expert_for_t(self, t: float) -> ExpertSpec:
        """The expert that owns noise level `t` (what sampling would run at that level)."""
        for spec in self.experts:
            if spec.contains(t):
                return spec
        raise ValueError(f"t={t} is outside [0, 1]")

    @abstractmethod
    def transformer(self, expert: str) -> torch.nn.Module: ...

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]: ...

    @abstractmethod
    def pad_text(self, embeds: list[torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def encode_condition(self, first_frame: torch.Tensor, num_frames: int) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def predict(
        self,
        expert: str,
        noisy: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        cond: dict[str, torch.Tensor],
    ) -> torch.Tensor: ...

    def offload(self, expert: str) -> None:
        """low_vram: move the expert (with its frozen adapters) to the host."""
        for module in self._expert_modules(expert):
            module.to("cpu")

    def onload(self, expert: str) -> None:
        for module in self._expert_modules(expert):
            module.to(self.device)

    def _expert_modules(self, expert: str) -> list[torch.nn.Module]:
        """The expert's transformer and its frozen accuracy-recovery / training adapters (they move together)."""
        frozen = [getattr(self, "recovery_adapters", {}).get(expert)]
        frozen.append(getattr(self, "training_adapters", {}).get(expert))
        return [self.transformer(expert)] + [net for net in frozen if net is not None]

    # ------------------------------------------------------------------- verbs with a family default
    def loss_mask(self, cond: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Broadcastable loss weights for a batch's latents, or None (every element counts)."""
        return None

    def cache_identity(self) -> CacheIdentity:
        return CacheIdentity(self.model_id, self.arch, bool(self.is_i2v))

    def text_encoders(self) -> list[torch.nn.Module]:
        """The loaded text encoders that `model.quantize_te` quantizes (empty once unloaded)."""
        encoder = self.components.get("text_encoder")
        return [] if encoder is None else [encoder]

    def unload_text_encoder(self) -> None:
        """Free the text encoder(s) once every caption is cached; encode_prompts then raises."""
        for name in self.text_encoder_components():
            self.components[name] = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def text_encoder_components(self) -> tuple[str, ...]:
        return ("text_encoder",)

    def base_scheduler(self):
        """The model's own scheduler (its config is what sampling starts from; never mutated)."""
        return self.components["scheduler"]

    def enable_gradient_checkpointing(self, expert: str) -> None:
        """Recompute block activations in backward (diffusers' own switch on the transformer)."""
        self.transformer(expert).enable_gradient_checkpointing()

    def timestep_shift(self, latents_shape: torch.Size) -> float | None:
        """The shift t = s*u / (1 + (s - 1)*u) the model's own sampler applies at this latent size
        (FLUX-style resolution-dependent shifting), or None for a model without one."""
        return None

    @contextlib.contextmanager
    def sampling_mode(self) -> Iterator[None]:
        """Inside: the model as inference sees it (frozen training adapters switched off)."""
        adapters = getattr(self, "training_adapters", {})
        before = {name: net.enabled for name, net in adapters.items()}
        try:
            for net in adapters.values():
                net.enabled = False
            yield
        finally:
            for name, enabled in before.items():
                adapters[name].enabled = enabled

    @abstractmethod
    def build_pipeline(self, i2v: bool | None = None):
        """The family's diffusers pipeline over the already-loaded modules (no reload)."""

    @abstractmethod
    def pipeline_call(
        self, spec: Any, prompt: Any, negative: Any, image: Any, generator: torch.Generator
    ) -> dict:
        """The keyword arguments of the pipeline call for one sample (`SampleSpec` fields; `prompt` /
        `negative` padded by `pad_text`; `image` a PIL first frame or None); output_type "np"."""

    def frames_of(self, output: Any, spec: Any) -> Any:
        """[F, H, W, 3] floats in [0, 1] from the pipeline's output for `spec` (one image is one frame)."""
        if self.output_kind == "image":
            return output.images[0][None]
        return output.frames[0]

    def attach_training_adapters(self) -> None:
        """Hook the frozen training adapters noted at load (`assistant_lora_path`); called by
        `cadence.perf.apply_quantization` once the base is quantized (quantizers may swap the hooked Linears)."""
        from cadence.models.training_adapter import attach_pending

        attach_pending(self)

    def describe(self) -> dict[str, object]:
        """Small summary for logs and run metadata."""
        return {
            "arch": self.arch,
            "model_id": self.model_id,
            "experts": [(e.name, e.t_low, e.t_high) for e in self.experts],
            "boundary": self.boundary,
        }
