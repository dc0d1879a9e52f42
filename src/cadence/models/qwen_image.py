"""Qwen-Image: the family (arch `qwen_image`, ai-toolkit's name) and the adapter, built from diffusers'
`QwenImagePipeline` / `QwenImageTransformer2DModel` and transformers' Qwen2.5-VL text encoder.

Text embeddings are the pipeline's own (`_get_qwen_prompt_embeds`: the prompt in Qwen-Image's chat template, the
last hidden states with the template's first 34 tokens dropped, cut to 512 tokens as the pipeline's call does);
each prompt keeps its own length and a batch is zero-padded with a mask, as the pipeline pads. Latents are the 3-D
VAE's (Wan-style per-channel mean/std), one frame, packed 2x2 by the pipeline's `_pack_latents`; the transformer
takes sigma as its timestep (the pipeline passes timestep / 1000). Sampling uses the pipeline with true CFG:
`sample.guidance_scale` is its `true_cfg_scale` (ai-toolkit's mapping), the negative prompt `sample.neg`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cadence.models.card_usage import ArchUsage
from cadence.models.family import ArchSpec, DiffusersNamesKeyMap
from cadence.models.image_adapter import ImageAdapter, ImageFamily
from cadence.models.image_loaders import LoaderRules

log = logging.getLogger(__name__)

TEXT_LEN = 512  # QwenImagePipeline.__call__'s max_sequence_length

ARCHS = {"qwen_image": ArchSpec("qwen_image", "Qwen-Image", spatial_multiple=16, output="image")}


# ComfyUI's Qwen-Image model and its `diffusion_model.` keys use diffusers' module names, and diffusers' Qwen loader
# reads them (and kohya's `lora_unet_` form): the key map is one to one over these names
BLOCK_PARTS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "img_mod.1", "txt_mod.1", "img_mlp.net.0.proj", "img_mlp.net.2",
    "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip
GLOBALS = ("img_in", "txt_in", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1",
           "time_text_embed.timestep_embedder.linear_2")  # fmt: skip


def _write_tiny(path: Path, arch: str, seed: int = 0) -> Path:
    from cadence.models.tiny_qwen_image import write_tiny_qwen_image

    return write_tiny_qwen_image(path, arch, seed)


class QwenImageAdapter(ImageAdapter):
    text_len = TEXT_LEN

    def vae_scale_factor(self) -> int:
        return 2 ** len(self.components["vae"].temperal_downsample)

    def _pipeline(self):
        from diffusers import QwenImagePipeline

        names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
        return QwenImagePipeline(**self.pipeline_components(names))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        """{"embeds": [L_i, D]} per prompt: the pipeline's states, each at its own length (<= 512)."""
        encoder = self.components["text_encoder"]
        if encoder is None:
            raise RuntimeError(
                "the text encoder was unloaded after caching; captions must come from the cache"
            )
        embeds, mask = self._pipeline()._get_qwen_prompt_embeds(
            list(prompts), next(encoder.parameters()).device
        )
        lengths = mask.sum(dim=1).tolist()
        if any(n > TEXT_LEN for n in lengths):
            log.warning("%d caption(s) are longer than the %d tokens Qwen-Image reads and were cut there",
                        sum(n > TEXT_LEN for n in lengths), TEXT_LEN)  # fmt: skip
        return [
            {"embeds": e[: min(n, TEXT_LEN)].to(self.device)} for e, n in zip(embeds, lengths, strict=True)
        ]

    def pad_text(self, embeds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Zero-padded to the longest prompt, with the mask the pipeline builds."""
        longest = max(e["embeds"].shape[0] for e in embeds)
        rows, masks = [], []
        for e in embeds:
            x = e["embeds"]
            rows.append(torch.cat([x, x.new_zeros(longest - x.shape[0], x.shape[1])]))
            masks.append(torch.arange(longest) < x.shape[0])
        return {"embeds": torch.stack(rows), "mask": torch.stack(masks).long()}

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1, H, W] in [-1, 1] -> normalised latents [B, 16, H/8, W/8] ((z - mean) / std per channel)."""
        vae = self.components["vae"]
        x = self.image_pixels(pixels).to(device=next(vae.parameters()).device, dtype=vae.dtype)
        latents = vae.encode(x).latent_dist.mode()[:, :, 0]
        shape = (1, vae.config.z_dim, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        return ((latents - mean) / std).to(device=self.device, dtype=torch.float32)

    def predict(
        self, expert: str, noisy: torch.Tensor, t: torch.Tensor, text: dict, cond: dict
    ) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        model = self.transformer(expert)
        b, c, h, w = noisy.shape
        packed = QwenImagePipeline._pack_latents(noisy, b, c, h, w).to(model.dtype)
        mask = text["mask"].to(noisy.device)
        out = model(
            hidden_states=packed,
            timestep=t.to(noisy.device).reshape(-1).expand(b).to(model.dtype),
            encoder_hidden_states=text["embeds"].to(model.dtype),
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        latents = QwenImagePipeline._unpack_latents(
            out, h * self.vae_scale, w * self.vae_scale, self.vae_scale
        )
        return latents[:, :, 0]

    def build_pipeline(self, i2v: bool | None = None):
        return self._pipeline()

    def pipeline_call(self, spec, prompt, negative, image, generator: torch.Generator) -> dict:
        return self.sample_call(
            spec,
            generator,
            prompt_embeds=prompt["embeds"],
            prompt_embeds_mask=prompt["mask"],
            negative_prompt_embeds=negative["embeds"],
            negative_prompt_embeds_mask=negative["mask"],
            true_cfg_scale=spec.guidance_scale,
        )


FAMILY = ImageFamily(
    name="qwen_image",
    title="Qwen-Image",
    archs=ARCHS,
    transformer_classes=("QwenImageTransformer2DModel",),
    keymap=DiffusersNamesKeyMap("qwen_image", ("transformer_blocks",), BLOCK_PARTS, GLOBALS),
    aliases={"qwen_image:2512": "qwen_image"},  # Qwen-Image-2512: the same architecture, newer weights
    block_lists=("transformer_blocks",),
    high_precision_parts=("norm", "img_mod", "txt_mod"),
    encoder_parts=("model_index.json", "vae", "text_encoder", "tokenizer"),
    pipeline="QwenImagePipeline",
    classes=("Qwen2_5_VLForConditionalGeneration", "AutoencoderKLQwenImage", "QwenImageTransformer2DModel"),
    adapter_class=QwenImageAdapter,
    card=ArchUsage(
        "Qwen-Image",
        "QwenImagePipeline",
        "text-to-image",
        False,
        {"main": "transformer"},
        {"main": "the Qwen-Image diffusion model (`qwen_image`)"},
        ("qwen-image",),
        0,
    ),  # fmt: skip
    tiny=_write_tiny,
    loader_rules=LoaderRules(comfy_kohya=True),
)
