"""FLUX.1 dev and schnell: the family (archs, detection, layout) and the adapter, built from diffusers' own
`FluxPipeline` / `FluxTransformer2DModel` and transformers' CLIP and T5 encoders.

Every tensor the transformer sees is built as `FluxPipeline` builds it: CLIP's pooled output and T5 states
padded to 512 tokens (the pipeline's max_sequence_length, and ai-toolkit's for both variants), latents
normalised with the VAE's shift and scaling factors and packed into 2x2 patches with the pipeline's own
`_pack_latents` / `_prepare_latent_image_ids`, the timestep as sigma (the pipeline passes timestep / 1000).
FLUX.1-dev is guidance-distilled: its guidance embedding gets 1.0 in training, ai-toolkit's value
(`train.cfg_scale`, default 1.0, as `guidance_embedding_scale`), and `sample.guidance_scale` when sampling.
Flow matching is the same as Wan's (x_t = (1 - t) x0 + t noise, target noise - x0); the model's scheduler
shifts by resolution (`timestep_shift`: exp(mu) of the pipeline's `calculate_shift`), which
`train.timestep_type: flux_shift` uses in training and FluxPipeline applies when sampling.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cadence.models.card_usage import ArchUsage
from cadence.models.components import frozen, load_component
from cadence.models.family import ArchSpec
from cadence.models.flux_keys import FLUX_KEYS
from cadence.models.folders import component_config
from cadence.models.image_adapter import ImageAdapter, ImageFamily, load_parts
from cadence.models.image_loaders import LoaderRules

log = logging.getLogger(__name__)

T5_LEN = 512
TRAIN_GUIDANCE = 1.0  # ai-toolkit's train.cfg_scale default, fed to dev's guidance embedding in training

ARCHS = {
    "flux": ArchSpec("flux", "FLUX.1 dev", spatial_multiple=16, output="image"),
    "flux_schnell": ArchSpec("flux_schnell", "FLUX.1 schnell", spatial_multiple=16, output="image"),
}


class FluxFamily(ImageFamily):
    def detect(self, folder: Path, index: dict[str, Any]) -> str | None:
        if str(index.get("_class_name", "")) != "FluxPipeline":
            return None
        return "flux" if component_config(folder, "transformer").get("guidance_embeds") else "flux_schnell"

    def accepts(self, configured: str, detected: str) -> bool:
        """ai-toolkit names both variants `arch: flux` (`is_flux: true`): flux loads a schnell folder too."""
        return configured == detected or configured == "flux"

    def required_components(self, arch: str) -> tuple[str, ...]:
        return (
            "tokenizer",
            "tokenizer_2",
            "text_encoder",
            "text_encoder_2",
            "vae",
            "scheduler",
            "transformer",
        )

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
        adapter = FluxAdapter.load(
            folder, arch, torch.device(device), dtype, model_id, model_cfg.low_vram, files
        )
        if not model_cfg.assistant_lora_path and arch == "flux_schnell":
            log.warning(
                "training FLUX.1-schnell without model.assistant_lora_path: the step distillation erodes as it "
                "trains (ai-toolkit: ostris/FLUX.1-schnell-training-adapter)"
            )
        return self.note_training_adapter(adapter, model_cfg)

    def usage(self, arch: str) -> ArchUsage:
        repo = "FLUX.1-dev" if arch == "flux" else "FLUX.1-schnell"
        return ArchUsage(
            ARCHS[arch].title,
            "FluxPipeline",
            "text-to-image",
            False,
            {"main": "transformer"},
            {"main": f"the {repo} diffusion model (`flux1-{'dev' if arch == 'flux' else 'schnell'}`)"},
            ("flux", repo.lower()),
            0,
        )

    def write_tiny(self, path: Path, arch: str, seed: int = 0) -> Path:
        from cadence.models.tiny_flux import write_tiny_flux

        return write_tiny_flux(path, arch, seed)


class FluxAdapter(ImageAdapter):
    """FLUX.1 dev / schnell: one transformer ("main"), text to image."""

    text_len = T5_LEN

    def __init__(self, arch: str, components: dict, device, dtype, model_id: str, low_vram: bool) -> None:
        super().__init__(arch, components, device, dtype, model_id, low_vram)
        self.guidance = bool(components["transformer"].config.guidance_embeds)

    @classmethod
    def load(
        cls,
        folder: Path,
        arch: str,
        device,
        dtype,
        model_id: str,
        low_vram: bool = False,
        files: dict[str, Path] | None = None,
    ) -> FluxAdapter:
        parts = load_parts(
            folder,
            device,
            dtype,
            low_vram,
            text_encoder="CLIPTextModel",
            vae="AutoencoderKL",
            transformer="FluxTransformer2DModel",
            files=files,
        )
        host = torch.device("cpu") if low_vram else device
        parts["tokenizer_2"] = load_component("AutoTokenizer", folder, "tokenizer_2")
        parts["text_encoder_2"] = frozen(
            load_component("T5EncoderModel", folder, "text_encoder_2", dtype=dtype), host
        )
        log.info("loaded %s from %s", arch, folder)
        return cls(arch, parts, device, dtype, model_id, low_vram)

    def text_encoder_components(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2")

    def text_encoders(self) -> list[torch.nn.Module]:
        """T5 only, as ai-toolkit quantizes for `quantize_te` (CLIP is small)."""
        t5 = self.components.get("text_encoder_2")
        return [] if t5 is None else [t5]

    # --------------------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        """{"embeds": T5 [512, D] (padded, as the pipeline passes them), "pooled": CLIP [D_clip]} per prompt."""
        clip, t5 = self.components["text_encoder"], self.components["text_encoder_2"]
        if clip is None or t5 is None:
            raise RuntimeError(
                "the text encoders were unloaded after caching; captions must come from the cache"
            )
        tok_clip, tok_t5 = self.components["tokenizer"], self.components["tokenizer_2"]
        ids = tok_clip(
            prompts,
            padding="max_length",
            max_length=tok_clip.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = clip(ids.to(next(clip.parameters()).device), output_hidden_states=False).pooler_output
        t5_ids = tok_t5(
            prompts, padding="max_length", max_length=T5_LEN, truncation=True, return_tensors="pt"
        ).input_ids
        _warn_truncated(tok_t5, prompts)
        states = t5(t5_ids.to(next(t5.parameters()).device), output_hidden_states=False)[0]
        pooled = pooled.to(device=self.device, dtype=clip.dtype)
        states = states.to(device=self.device, dtype=t5.dtype)
        return [{"embeds": s, "pooled": p} for s, p in zip(states, pooled, strict=True)]

    def pad_text(self, embeds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """T5 states are already 512 long: stacked, with the pooled vectors."""
        return {
            "embeds": torch.stack([e["embeds"] for e in embeds]),
            "pooled": torch.stack([e["pooled"] for e in embeds]),
        }

    # ------------------------------------------------------------------------------------------ latents
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1, H, W] (an image is a one-frame clip) in [-1, 1] -> normalised latents [B, 16, H/8, W/8]."""
        return self.shifted_latents(pixels)

    # ------------------------------------------------------------------------------------------ forward
    def predict(
        self, expert: str, noisy: torch.Tensor, t: torch.Tensor, text: dict, cond: dict
    ) -> torch.Tensor:
        """Velocity of noisy latents [B, 16, h, w] at sigma t ([B]), packed and unpacked as FluxPipeline does."""
        from diffusers import FluxPipeline

        model = self.transformer(expert)
        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w).to(model.dtype)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, model.dtype)
        states = text["embeds"].to(model.dtype)
        txt_ids = torch.zeros(states.shape[1], 3, device=noisy.device, dtype=model.dtype)
        t = t.to(noisy.device).reshape(-1).expand(b)
        guidance = torch.full((b,), TRAIN_GUIDANCE, device=noisy.device) if self.guidance else None
        out = model(
            hidden_states=packed,
            timestep=t.to(model.dtype),
            guidance=guidance,
            pooled_projections=text["pooled"].to(model.dtype),
            encoder_hidden_states=states,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return FluxPipeline._unpack_latents(out, h * self.vae_scale, w * self.vae_scale, self.vae_scale)

    # ----------------------------------------------------------------------------------------- sampling
    def build_pipeline(self, i2v: bool | None = None):
        from diffusers import FluxPipeline

        names = (
            "scheduler",
            "vae",
            "text_encoder",
            "tokenizer",
            "text_encoder_2",
            "tokenizer_2",
            "transformer",
        )
        return FluxPipeline(**self.pipeline_components(names))

    def pipeline_call(self, spec, prompt, negative, image, generator: torch.Generator) -> dict:
        """FLUX.1 has no negative prompt (ai-toolkit: "not used on flux"); guidance_scale is dev's guidance
        embedding. Latents come back and are decoded by `frames_of` with the fp32 VAE."""
        return self.sample_call(
            spec,
            generator,
            prompt_embeds=prompt["embeds"],
            pooled_prompt_embeds=prompt["pooled"],
            guidance_scale=spec.guidance_scale,
        ) | {"output_type": "latent"}

    @torch.no_grad()
    def frames_of(self, output, spec) -> Any:
        """The pipeline's last step (unpack, denormalise, VAE decode, postprocess) with the VAE in fp32: the
        pipeline would hand the fp32 VAE latents in the transformer's dtype."""
        from diffusers import FluxPipeline
        from diffusers.image_processor import VaeImageProcessor

        vae = self.components["vae"]
        latents = FluxPipeline._unpack_latents(output.images, spec.height, spec.width, self.vae_scale)
        latents = latents.to(device=next(vae.parameters()).device, dtype=vae.dtype)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale * 2)
        return processor.postprocess(image, output_type="np")[:1]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "guidance_embeds": self.guidance}


def _warn_truncated(tokenizer, prompts: list[str]) -> None:
    """Say when a caption is longer than T5's 512 tokens: the pipeline cuts it silently."""
    cut = [p for p in prompts if len(tokenizer(p).input_ids) > T5_LEN]
    if cut:
        log.warning(
            "%d caption(s) are longer than the %d tokens the T5 encoder reads and were cut there (e.g. %r...); "
            "shorten them or put what matters first",
            len(cut),
            T5_LEN,
            cut[0][:60],
        )


FAMILY = FluxFamily(
    name="flux",
    title="FLUX.1",
    archs=ARCHS,
    transformer_classes=("FluxTransformer2DModel",),
    keymap=FLUX_KEYS,
    aliases={"flux:dev": "flux", "flux:schnell": "flux_schnell", "flux1": "flux"},
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    high_precision_parts=("norm",),  # the adaLN modulation Linears (norm1.linear, norm.linear)
    encoder_parts=("model_index.json", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    training_adapter=True,
    loader_rules=LoaderRules(
        comfy_kohya=True,
        diffusers_caveat={
            layout: "its converter assumes FLUX.1's layer sizes (3072) for the single blocks' fused linear1"
            for layout in ("comfyui", "kohya")
        },
        drops_alpha_of=("proj_out", "norm_out.linear"),
    ),
)
