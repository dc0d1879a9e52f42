"""Generate one sample with diffusers' own Wan pipeline over the already-loaded modules.

The pipeline is built from the adapter's transformers, whose LoRA networks are attached by forward hooks,
so it samples with the current adapters (an expert without a network runs as the base model) and with
the model's expert boundary. Prompts are encoded once up front (`prepare_texts`) and passed as embeddings:
the text encoder may already be unloaded during training (train.cache_text_embeddings), and the pipeline
then never touches it. Noise comes from a CPU `torch.Generator(seed)`, so the same seed gives the same
video on any device and no global RNG stream is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cadence.config.schema import I2V_ONLY_ARCHS, SampleConfig
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


def effective_shift(base, sample: SampleConfig) -> float:
    """sample.flow_shift, else the shift in the model's scheduler config (1.0 = unshifted)."""
    if sample.flow_shift is not None:
        return float(sample.flow_shift)
    return float(base.config.get("flow_shift") or 1.0)


def build_scheduler(base, sample: SampleConfig):
    """A fresh scheduler for one sampling run, so the adapter's own scheduler object is never mutated.

    flowmatch/euler: flow-matching Euler with the model's shift (or sample.flow_shift);
    unipc: the model's own scheduler class and config (Wan ships UniPC), shift overridden if set.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(base.config)
    shift = effective_shift(base, sample)
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
        self._embeds: dict[str, torch.Tensor] = {}

    # --------------------------------------------------------------------------------------- text
    def prepare_texts(self, texts: list[str], fallback: Callable[[str], torch.Tensor] | None = None) -> None:
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
            self._embeds[text] = embed.detach().to("cpu")

    def _text(self, text: str) -> torch.Tensor:
        if text not in self._embeds:
            self.prepare_texts([text])
        return self.adapter.pad_text([self._embeds[text]]).to(self.adapter.device)

    # ----------------------------------------------------------------------------------- pipeline
    def _pipeline(self, i2v: bool):
        pipe = self.adapter.build_pipeline(i2v=i2v)
        # No text encoder in the pipeline: embeddings are passed in, and an offloaded (low_vram) encoder
        # listed first would make diffusers pick the CPU as the execution device.
        pipe.register_modules(
            text_encoder=None, scheduler=build_scheduler(self.adapter.components["scheduler"], self.sample)
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _uses_image(self, spec: SampleSpec) -> bool:
        if self.adapter.arch in I2V_ONLY_ARCHS and spec.ctrl_img is None:
            raise ValueError(
                f"sample {spec.index} has no ctrl_img, but {self.adapter.arch} is image-to-video only"
            )
        return spec.ctrl_img is not None and self.adapter.is_i2v

    def generate(self, spec: SampleSpec) -> np.ndarray:
        """[F, H, W, 3] uint8 frames of one sample (call inside `sampling_state`)."""
        i2v = self._uses_image(spec)
        kwargs: dict = dict(
            prompt_embeds=self._text(spec.prompt),
            negative_prompt_embeds=self._text(spec.neg),
            height=spec.height,
            width=spec.width,
            num_frames=spec.num_frames,
            num_inference_steps=spec.sample_steps,
            guidance_scale=spec.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(spec.seed),
            output_type="np",
        )
        if self.adapter.boundary is not None:
            kwargs["guidance_scale_2"] = spec.guidance_scale_2
        if i2v:
            kwargs["image"] = load_ctrl_image(spec.ctrl_img, spec.width, spec.height)
        for net in self.networks.values():
            net.multiplier = spec.multiplier
        frames = self._pipeline(i2v)(**kwargs).frames[0]
        return to_uint8(np.asarray(frames))

    @contextmanager
    def session(self) -> Iterator[None]:
        """Everything sampling changes (modes, multipliers, RNG, attention backend) restored on exit."""
        with sampling_state(self.adapter, self.networks, self.sample.attention_backend):
            yield

    def flow_shift(self) -> float:
        return effective_shift(self.adapter.components["scheduler"], self.sample)

    def alphas(self) -> dict[str, dict[str, float | None]]:
        return {e: {"linear": n.linear_alpha, "conv": n.conv_alpha} for e, n in self.networks.items()}
