"""Wan 2.1 / 2.2 behind the ModelAdapter contract, built from diffusers' and transformers' own classes.

Every tensor the transformer sees is built the way diffusers' `WanPipeline` / `WanImageToVideoPipeline`
build it during sampling (text padding, latent normalization, the I2V mask + first-frame latent, TI2V-5B's
per-token timesteps), so a LoRA trained here sees at inference exactly what it saw in training.
Latents use the VAE posterior's mode, not a sample: deterministic, so latent caches are reproducible, and
it is what the pipeline uses for the I2V condition.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cadence.models.base import ExpertSpec, ModelAdapter, experts_for
from cadence.models.components import frozen, load_component, scheduler_class

log = logging.getLogger(__name__)

TEXT_LEN = 512  # the pipelines' max_sequence_length; the transformer's I2V attention assumes it too
NON_EXPAND_I2V = ("wan21_i2v", "wan22_14b_i2v")


class WanAdapter(ModelAdapter):
    """All Wan archs: wan21, wan21_i2v, wan22_14b, wan22_14b_i2v, wan22_5b."""

    text_len = TEXT_LEN

    def __init__(
        self,
        arch: str,
        components: dict,
        index: dict,
        device: torch.device,
        dtype: torch.dtype,
        boundary: float | None,
        model_id: str,
        low_vram: bool = False,
        trained_experts: tuple[str, ...] = (),
    ) -> None:
        self.arch = arch
        self.components = components
        self.index = index
        self.device = device
        self.dtype = dtype
        self.low_vram = low_vram
        self.recovery_adapters = {}
        self.training_adapters = {}
        self.model_id = model_id
        self.boundary = boundary
        self.experts = experts_for("transformer_2" in components, boundary)
        self.trained_experts = trained_experts or tuple(e.name for e in self.experts)
        self.expand_timesteps = arch == "wan22_5b"
        self.is_i2v = arch in NON_EXPAND_I2V or arch == "wan22_5b"
        vae_cfg = components["vae"].config
        patch = components["transformer"].config.patch_size
        self.vae_spatial = int(vae_cfg.scale_factor_spatial)
        self.vae_temporal = int(vae_cfg.scale_factor_temporal)
        self.patch = (int(patch[1]), int(patch[2]))
        self.spatial_multiple = self.vae_spatial * self.patch[0]
        self.temporal_multiple = self.vae_temporal
        self.native_fps = 24 if arch == "wan22_5b" else 16
        self.latent_channels = int(vae_cfg.z_dim)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        folder: Path,
        arch: str,
        device: torch.device,
        dtype: torch.dtype,
        boundary: float | None,
        model_id: str,
        low_vram: bool = False,
        trained_experts: tuple[str, ...] = (),
        files: dict[str, Path] | None = None,
    ) -> WanAdapter:
        """Load every component training and sampling need from a checked Diffusers folder, frozen (an expert
        in `files` from its single-file checkpoint)."""
        from cadence.models.folders import read_model_index
        from cadence.models.wan_family import FAMILY

        names = FAMILY.required_components(arch)
        expert_device = torch.device("cpu") if low_vram else device
        parts: dict = {
            "tokenizer": load_component("AutoTokenizer", folder, "tokenizer"),
            "scheduler": load_component(
                scheduler_class(folder, "UniPCMultistepScheduler"), folder, "scheduler"
            ),
            "text_encoder": frozen(
                load_component("UMT5EncoderModel", folder, "text_encoder", dtype=dtype), expert_device
            ),
            # fp32 VAE: encoding in bf16 visibly shifts latents, and the VAE is small (~0.5 GB).
            "vae": frozen(
                load_component("AutoencoderKLWan", folder, "vae", torch_dtype=torch.float32), device
            ),
        }
        for name in ("transformer", "transformer_2"):
            if name in names:
                module = load_component(
                    "WanTransformer3DModel", folder, name, (files or {}).get(name), torch_dtype=dtype
                )
                parts[name] = frozen(module, expert_device)
        if "image_encoder" in names:
            parts["image_processor"] = load_component("CLIPImageProcessor", folder, "image_processor")
            parts["image_encoder"] = frozen(
                load_component("CLIPVisionModel", folder, "image_encoder", dtype=torch.float32), device
            )
        log.info("loaded %s (%s) from %s", arch, ", ".join(sorted(parts)), folder)
        return cls(
            arch,
            parts,
            read_model_index(folder),
            device,
            dtype,
            boundary,
            model_id,
            low_vram,
            trained_experts,
        )

    # ------------------------------------------------------------------------------------------ experts
    def transformer(self, expert: str) -> torch.nn.Module:
        return self.components[self.expert(expert).component]

    # --------------------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """T5 embeddings per prompt, [L_i, D], cut to the prompt's own tokens like the pipeline does."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        tokens = self.components["tokenizer"](
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=TEXT_LEN,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        encoder = self.components["text_encoder"]
        if encoder is None:
            raise RuntimeError(
                "the text encoder was unloaded after caching; captions must come from the cache"
            )
        te_device = next(encoder.parameters()).device
        lengths = tokens.attention_mask.gt(0).sum(dim=1).long()
        self._warn_truncated(prompts, lengths.tolist())
        hidden = encoder(
            tokens.input_ids.to(te_device), tokens.attention_mask.to(te_device)
        ).last_hidden_state
        hidden = hidden.to(device=self.device, dtype=encoder.dtype)
        return [h[:n] for h, n in zip(hidden, lengths.tolist(), strict=True)]

    def _warn_truncated(self, prompts: list[str], lengths: list[int]) -> None:
        """Say when a caption is longer than the text encoder reads: the pipeline cuts it silently, so the
        end of a long caption (often where the trigger word or the motion is) would never be trained."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        full = [p for p, n in zip(prompts, lengths, strict=True) if n >= TEXT_LEN]
        counts = [len(self.components["tokenizer"](prompt_clean(p)).input_ids) for p in full]
        cut = [p for p, n in zip(full, counts, strict=True) if n > TEXT_LEN]
        if cut:
            log.warning(
                "%d caption(s) are longer than the %d tokens the text encoder reads and were cut there "
                "(e.g. %r...); shorten them or put what matters first",
                len(cut),
                TEXT_LEN,
                cut[0][:60],
            )

    def pad_text(self, embeds: list[torch.Tensor]) -> torch.Tensor:
        """Zero-pad each [L_i, D] to [TEXT_LEN, D] and stack: the pipeline's prompt_embeds layout."""
        rows = []
        for e in embeds:
            if e.shape[0] > TEXT_LEN:
                raise ValueError(f"text embedding has {e.shape[0]} tokens, more than {TEXT_LEN}")
            rows.append(torch.cat([e, e.new_zeros(TEXT_LEN - e.shape[0], e.shape[1])]))
        return torch.stack(rows, dim=0)

    # ------------------------------------------------------------------------------------------ latents
    def _normalize(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.components["vae"].config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(shape).to(latents.device, latents.dtype)
        return (latents - mean) * inv_std

    def _vae_encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.components["vae"]
        x = pixels.to(device=next(vae.parameters()).device, dtype=vae.dtype)
        return vae.encode(x).latent_dist.mode().to(device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> normalized latents [B, z, (F-1)/4+1, H/s, W/s] (fp32)."""
        self._check_pixels(pixels.shape[-2], pixels.shape[-1])
        return self._normalize(self._vae_encode(pixels))

    def _check_pixels(self, height: int, width: int) -> None:
        m = self.spatial_multiple
        if height % m or width % m:
            raise ValueError(f"frame size {width}x{height} is not a multiple of {m} (arch {self.arch})")

    @torch.no_grad()
    def encode_condition(self, first_frame: torch.Tensor, num_frames: int) -> dict[str, torch.Tensor]:
        """First-frame conditioning as WanImageToVideoPipeline.prepare_latents builds it (no last image)."""
        if not self.is_i2v:
            return {}
        if (num_frames - 1) % self.vae_temporal:
            raise ValueError(f"num_frames must be {self.vae_temporal}k+1, got {num_frames}")
        b, _, height, width = first_frame.shape
        self._check_pixels(height, width)
        image = first_frame.to(torch.float32).unsqueeze(2)
        lat_frames = (num_frames - 1) // self.vae_temporal + 1
        h, w = height // self.vae_spatial, width // self.vae_spatial
        if self.expand_timesteps:  # TI2V-5B: only the first frame is encoded; the mask says where it goes
            latent = self._normalize(self._vae_encode(image))
            mask = torch.ones(b, 1, lat_frames, h, w, device=self.device)  # pipeline: batch 1, same values
            mask[:, :, 0] = 0
            return {"first_frame_latent": latent, "first_frame_mask": mask}
        video = torch.cat([image, image.new_zeros(b, 3, num_frames - 1, height, width)], dim=2)
        latent = self._normalize(self._vae_encode(video))
        out = {"condition": torch.cat([self._frame_mask(b, num_frames, h, w), latent], dim=1)}
        if "image_encoder" in self.components:
            out["image_embeds"] = self.encode_image(first_frame)
        return out

    def _frame_mask(self, b: int, num_frames: int, h: int, w: int) -> torch.Tensor:
        """The 4-channel mask: frame 0 known, the rest generated, folded by the VAE's temporal stride."""
        mask = torch.ones(b, 1, num_frames, h, w)
        mask[:, :, 1:] = 0
        first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=self.vae_temporal)
        mask = torch.cat([first, mask[:, :, 1:]], dim=2)
        mask = mask.view(b, -1, self.vae_temporal, h, w).transpose(1, 2)
        return mask.to(self.device)

    @torch.no_grad()
    def encode_image(self, first_frame: torch.Tensor) -> torch.Tensor:
        """CLIP penultimate hidden states of the first frame (Wan 2.1 I2V), as the pipeline's encode_image.

        The pipeline hands the user's PIL image to the CLIP processor; we rebuild those uint8 pixels from
        [-1, 1] so the processor sees the same input.
        """
        pixels = ((first_frame.detach().float().cpu().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
        images = [np.ascontiguousarray(p.permute(1, 2, 0).numpy()) for p in pixels]
        encoder = self.components["image_encoder"]
        inputs = self.components["image_processor"](images=images, return_tensors="pt")
        inputs = inputs.to(next(encoder.parameters()).device)
        hidden = encoder(**inputs, output_hidden_states=True).hidden_states[-2]
        return hidden.to(self.device)

    # ------------------------------------------------------------------------------------------ forward
    def predict(
        self,
        expert: str,
        noisy: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        cond: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Velocity prediction of `expert` for noisy latents at noise level t in [0, 1] ([B])."""
        model = self.transformer(expert)
        dtype = model.dtype
        t = t.to(noisy.device).reshape(-1).expand(noisy.shape[0])
        timestep = t * 1000.0
        if self.expand_timesteps:
            hidden, timestep = self._expand_inputs(noisy, timestep, cond)
        elif "condition" in cond:
            hidden = torch.cat([noisy, cond["condition"].to(noisy)], dim=1)
        elif self.is_i2v:
            raise ValueError(f"arch {self.arch} needs cond['condition'] from encode_condition()")
        else:
            hidden = noisy
        image = cond.get("image_embeds")
        if image is None and "image_encoder" in self.components:
            raise ValueError("Wan 2.1 I2V needs cond['image_embeds'] from encode_condition()")
        return model(
            hidden_states=hidden.to(dtype),
            timestep=timestep,
            encoder_hidden_states=text.to(dtype),
            encoder_hidden_states_image=None if image is None else image.to(dtype),
            return_dict=False,
        )[0]

    def _expand_inputs(
        self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TI2V-5B: put the clean first-frame latent in frame 0 and give its tokens timestep 0."""
        mask = cond.get("first_frame_mask")
        if mask is None:  # text-to-video: every token at the same noise level
            mask = torch.ones(1, 1, *noisy.shape[2:], device=noisy.device)
            hidden = noisy
        else:
            mask = mask.to(noisy)
            hidden = (1 - mask) * cond["first_frame_latent"].to(noisy) + mask * noisy
        per_token = mask[:, 0, :, :: self.patch[0], :: self.patch[1]].flatten(1)  # [B or 1, tokens]
        return hidden, per_token * timestep.unsqueeze(1)

    def loss_mask(self, cond: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[1, 1, F', h, w] weights for the loss, or None: TI2V-5B's conditioned frame is not predicted."""
        return cond.get("first_frame_mask")

    # ----------------------------------------------------------------------------------------- sampling
    @property
    def pipeline_class(self):
        import diffusers

        return diffusers.WanImageToVideoPipeline if self.is_i2v else diffusers.WanPipeline

    def build_pipeline(self, i2v: bool | None = None):
        """A diffusers pipeline over the already-loaded modules (no reload); i2v=False gives 5B's T2V."""
        import diffusers

        i2v = self.is_i2v if i2v is None else i2v
        cls = diffusers.WanImageToVideoPipeline if i2v else diffusers.WanPipeline
        names = ("tokenizer", "text_encoder", "vae", "scheduler", "transformer", "transformer_2")
        kwargs = {n: self.components.get(n) for n in names}
        if i2v:
            kwargs["image_encoder"] = self.components.get("image_encoder")
            kwargs["image_processor"] = self.components.get("image_processor")
        return cls(**kwargs, boundary_ratio=self.boundary, expand_timesteps=self.expand_timesteps)

    def pipeline_call(self, spec, prompt, negative, image, generator: torch.Generator) -> dict:
        """WanPipeline / WanImageToVideoPipeline arguments: T5 embeddings passed in, frames as np."""
        kwargs: dict = dict(
            prompt_embeds=prompt,
            negative_prompt_embeds=negative,
            height=spec.height,
            width=spec.width,
            num_frames=spec.num_frames,
            num_inference_steps=spec.sample_steps,
            guidance_scale=spec.guidance_scale,
            generator=generator,
            output_type="np",
        )
        if self.boundary is not None:
            kwargs["guidance_scale_2"] = spec.guidance_scale_2
        if image is not None:
            kwargs["image"] = image
        return kwargs

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "trained_experts": list(self.trained_experts)}


__all__ = ["WanAdapter", "ExpertSpec"]
