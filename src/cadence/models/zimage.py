"""Z-Image: the family (arch `zimage`, ai-toolkit's name; `zimage:turbo` / `zimage:deturbo` are the same
architecture) and the adapter, built from diffusers' `ZImagePipeline` / `ZImageTransformer2DModel` and
transformers' Qwen3 text encoder.

Text embeddings are the pipeline's own (`_encode_prompt`: the prompt in the tokenizer's chat template, the second
to last hidden states of its real tokens, up to 512); the transformer takes a list of per-prompt states, so a
batch keeps each prompt's length. Latents are the AutoencoderKL's with its shift and scale, one frame per image.
Z-Image's transformer runs its time the other way round and predicts the opposite direction: it gets 1 - sigma
and the pipeline negates its output; `predict` does both, so the training target stays noise - x0 as for every
family. Sampling uses the pipeline's CFG (`sample.guidance_scale`, negative `sample.neg`).
`assistant_lora_path` takes ai-toolkit's Z-Image-Turbo training adapter.
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

TEXT_LEN = 512  # ZImagePipeline.__call__'s max_sequence_length
ARCHS = {"zimage": ArchSpec("zimage", "Z-Image", spatial_multiple=16, output="image")}
BLOCKS = ("noise_refiner", "context_refiner", "layers")  # execution order
BLOCK_PARTS = (
    "attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0", "feed_forward.w1",
    "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0",
)  # fmt: skip
GLOBALS = ("cap_embedder.1", "t_embedder.mlp.0", "t_embedder.mlp.2")


def _write_tiny(path: Path, arch: str, seed: int = 0) -> Path:
    from cadence.models.tiny_zimage import write_tiny_zimage

    return write_tiny_zimage(path, arch, seed)


class ZImageAdapter(ImageAdapter):
    text_len = TEXT_LEN

    def _pipeline(self):
        from diffusers import ZImagePipeline

        names = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
        return ZImagePipeline(**self.pipeline_components(names))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """[L_i, D] per prompt: the pipeline's states of the prompt's own tokens."""
        encoder = self.components["text_encoder"]
        if encoder is None:
            raise RuntimeError(
                "the text encoder was unloaded after caching; captions must come from the cache"
            )
        states = self._pipeline()._encode_prompt(
            list(prompts), next(encoder.parameters()).device, max_sequence_length=TEXT_LEN
        )
        return [s.to(self.device) for s in states]

    def pad_text(self, embeds: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Zero-padded to the longest, with each prompt's length (predict hands the transformer the list)."""
        longest = max(e.shape[0] for e in embeds)
        rows = [torch.cat([e, e.new_zeros(longest - e.shape[0], e.shape[1])]) for e in embeds]
        return {"embeds": torch.stack(rows), "lengths": torch.tensor([e.shape[0] for e in embeds])}

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 1, H, W] in [-1, 1] -> normalised latents [B, 16, H/8, W/8]."""
        return self.shifted_latents(pixels)

    @staticmethod
    def _states(text: dict, dtype: torch.dtype) -> list[torch.Tensor]:
        return [e[:n].to(dtype) for e, n in zip(text["embeds"], text["lengths"].tolist(), strict=True)]

    def predict(
        self, expert: str, noisy: torch.Tensor, t: torch.Tensor, text: dict, cond: dict
    ) -> torch.Tensor:
        """Velocity (noise - x0): the transformer gets 1 - sigma and its output is negated, as in the pipeline."""
        model = self.transformer(expert)
        b = noisy.shape[0]
        t = t.to(noisy.device).reshape(-1).expand(b)
        x = list(noisy.to(model.dtype).unsqueeze(2).unbind(dim=0))  # each [C, 1, h, w]
        out = model(x, 1.0 - t.to(model.dtype), self._states(text, model.dtype), return_dict=False)[0]
        return -torch.stack(out, dim=0).squeeze(2)

    def build_pipeline(self, i2v: bool | None = None):
        return self._pipeline()

    def pipeline_call(self, spec, prompt, negative, image, generator: torch.Generator) -> dict:
        return self.sample_call(
            spec,
            generator,
            prompt_embeds=self._states(prompt, self.dtype),
            negative_prompt_embeds=self._states(negative, self.dtype),
            guidance_scale=spec.guidance_scale,
        )


FAMILY = ImageFamily(
    name="zimage",
    title="Z-Image",
    archs=ARCHS,
    transformer_classes=("ZImageTransformer2DModel",),
    keymap=DiffusersNamesKeyMap("zimage", BLOCKS, BLOCK_PARTS, GLOBALS),
    aliases={"zimage:turbo": "zimage", "zimage:deturbo": "zimage"},
    block_lists=BLOCKS,
    high_precision_parts=("norm", "adaLN"),
    encoder_parts=("model_index.json", "vae", "text_encoder", "tokenizer"),
    training_adapter=True,
    pipeline="ZImagePipeline",
    classes=("AutoModel", "AutoencoderKL", "ZImageTransformer2DModel"),
    adapter_class=ZImageAdapter,
    card=ArchUsage(
        "Z-Image",
        "ZImagePipeline",
        "text-to-image",
        False,
        {"main": "transformer"},
        {"main": "the Z-Image diffusion model (`z_image`)"},
        ("z-image",),
        0,
    ),  # fmt: skip
    tiny=_write_tiny,
    loader_rules=LoaderRules(comfy_kohya=False, diffusers_algos={"comfyui": frozenset({"lora", "lokr"})}),
)
