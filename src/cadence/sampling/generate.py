"""Generate one sample with the model family's own diffusers pipeline over the already-loaded modules.

The pipeline is built by the adapter (`build_pipeline`) from its transformers, whose LoRA networks are
attached by forward hooks, so it samples with the current adapters (an expert without a network runs as the
base model) and with the model's expert boundary; the adapter also words the call (`pipeline_call`) and reads
its output (`frames_of`). Prompts are encoded once up front (`prepare_texts`) and passed as embeddings: the
text encoder may already be unloaded during training (train.cache_text_embeddings), and the pipeline then
never touches it. Noise comes from a CPU `torch.Generator(seed)`, so the same seed gives the same video or
image on any device and no global RNG stream is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cadence.config.schema import SampleConfig
from cadence.models.base import move_text
from cadence.networks.lora import LoRANetwork
from cadence.sampling.prompts import SampleSpec
from cadence.sampling.state import sampling_state
from cadence.sampling.writers import to_uint8

log = logging.getLogger(__name__)


def load_ctrl_image(path: Path, width: int, height: int) -> Image.Image:
    """The control image, EXIF-rotated, scaled to cover width x height and center-cropped (aspect kept,
    like the training buckets), so the pipeline's own resize is a no-op."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        return ImageOps.fit(image, (width, height), Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def _is_flow_euler(base) -> bool:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return isinstance(base, FlowMatchEulerDiscreteScheduler)


def effective_shift(base, sample: SampleConfig) -> float | None:
    """sample.flow_shift, else the shift in the model's scheduler config (1.0 = unshifted); None when the
    model's own flow-matching scheduler shifts by resolution (FLUX, Qwen-Image, Z-Image: the pipeline
    computes it from the image size)."""
    if sample.flow_shift is not None:
        return float(sample.flow_shift)
    if _is_flow_euler(base):
        return None if base.config.get("use_dynamic_shifting") else float(base.config.get("shift") or 1.0)
    return float(base.config.get("flow_shift") or 1.0)


def build_scheduler(base, sample: SampleConfig):
    """A fresh scheduler for one sampling run, so the adapter's own scheduler object is never mutated.

    flowmatch/euler: flow-matching Euler with the model's shift (or sample.flow_shift); a model that ships
    flow-matching Euler itself keeps its whole config (resolution-dependent shifting included) unless
    sample.flow_shift sets a fixed shift;
    unipc: the model's own scheduler class and config (Wan ships UniPC), shift overridden if set.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(base.config)
    shift = effective_shift(base, sample)
    if _is_flow_euler(base):
        fixed = {} if sample.flow_shift is None else {"shift": shift, "use_dynamic_shifting": False}
        return FlowMatchEulerDiscreteScheduler.from_config(config, **fixed)
    if sample.sampler == "unipc":
        override = {"flow_shift": shift} if "flow_shift" in config else {}
        return type(base).from_config(config, **override)
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)), shift=shift
    )


class SampleEngine:
    """Turns a `SampleSpec` into frames, with the networks at the spec's multiplier."""

    def __init__(self, adapter, networks: dict[str, LoRANetwork], sample: SampleConfig) -> None:
        self.adapter = adapter
        self.networks = networks
        self.sample = sample
        self._embeds: dict[str, object] = {}  # text -> its embedding (cadence.models.base.TextEmbedding)

    # --------------------------------------------------------------------------------------- text
    def prepare_texts(self, texts: list[str], fallback: Callable[[str], object] | None = None) -> None:
        """Encode each text once (one at a time, so the values never depend on batch composition).

        With the text encoder already unloaded, `fallback(text)` supplies the embedding (the text cache).
        """
        for text in dict.fromkeys(texts):
            if text in self._embeds:
                continue
            try:
                embed = self.adapter.encode_prompts([text])[0]
            except RuntimeError:
                if fallback is None:
                    raise
                embed = fallback(text)
            self._embeds[text] = move_text(embed, "cpu")  # encode_prompts runs without autograd

    def _text(self, text: str):
        if text not in self._embeds:
            self.prepare_texts([text])
        return move_text(self.adapter.pad_text([self._embeds[text]]), self.adapter.device)

    # ----------------------------------------------------------------------------------- pipeline
    def _pipeline(self, i2v: bool):
        pipe = self.adapter.build_pipeline(i2v=i2v)
        # No text encoder in the pipeline: embeddings are passed in, and an offloaded (low_vram) encoder
        # listed first would make diffusers pick the CPU as the execution device.
        pipe.register_modules(
            **{name: None for name in self.adapter.text_encoder_components()},
            scheduler=build_scheduler(self.adapter.base_scheduler(), self.sample),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _uses_image(self, spec: SampleSpec) -> bool:
        from cadence.models.registry import arch_spec

        if arch_spec(self.adapter.arch).i2v == "always" and spec.ctrl_img is None:
            raise ValueError(
                f"sample {spec.index} has no ctrl_img, but {self.adapter.arch} is image-to-video only"
            )
        return spec.ctrl_img is not None and self.adapter.is_i2v

    def generate(self, spec: SampleSpec) -> np.ndarray:
        """[F, H, W, 3] uint8 frames of one sample (one frame for an image model; call inside
        `sampling_state`)."""
        i2v = self._uses_image(spec)
        image = load_ctrl_image(spec.ctrl_img, spec.width, spec.height) if i2v else None
        generator = torch.Generator("cpu").manual_seed(spec.seed)
        kwargs = self.adapter.pipeline_call(
            spec, self._text(spec.prompt), self._text(spec.neg), image, generator
        )
        for net in self.networks.values():
            net.multiplier = spec.multiplier
        frames = self.adapter.frames_of(self._pipeline(i2v)(**kwargs), spec)
        return to_uint8(np.asarray(frames))

    @contextmanager
    def session(self) -> Iterator[None]:
        """Everything sampling changes (modes, multipliers, RNG, attention backend, frozen training adapters
        switched off as at inference) restored on exit."""
        with sampling_state(self.adapter, self.networks, self.sample.attention_backend):
            with self.adapter.sampling_mode():
                yield

    def flow_shift(self) -> float | None:
        return effective_shift(self.adapter.base_scheduler(), self.sample)

    def alphas(self) -> dict[str, dict[str, float | None]]:
        return {e: {"linear": n.linear_alpha, "conv": n.conv_alpha} for e, n in self.networks.items()}
