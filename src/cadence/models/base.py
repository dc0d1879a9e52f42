"""The model-adapter contract: what the trainer may ask of a model family (see docs/design.md).

Generic code (data caches, the train step, sampling) talks only to `ModelAdapter`; everything that depends
on a family's layout (which experts exist, how conditioning tensors are built) lives behind it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


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
    """Family-independent view of a loaded video diffusion model."""

    arch: str
    experts: tuple[ExpertSpec, ...]
    boundary: float | None
    spatial_multiple: int
    temporal_multiple: int
    native_fps: int
    is_i2v: bool
    model_id: str
    text_len: int
    recovery_adapters: dict  # expert -> frozen accuracy-recovery network (filled by perf.apply_quantization)

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

    @abstractmethod
    def offload(self, expert: str) -> None: ...

    @abstractmethod
    def onload(self, expert: str) -> None: ...
