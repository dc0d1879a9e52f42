"""Tiny random-weight Qwen-Image pipelines, written as complete Diffusers folders by
`QwenImagePipeline.save_pretrained`, so `QwenImagePipeline.from_pretrained` and Cadence's loader read them like a
downloaded Qwen-Image folder.

The text encoder is a real Qwen2.5-VL (transformers' class, two tiny layers) with the byte-level BPE tokenizer of
`tiny_vlm.py` (built offline with the `tokenizers` library, Qwen's special tokens); the VAE is Qwen-Image's own
3-D AutoencoderKLQwenImage (Wan-style, per-channel latent mean/std); the transformer a QwenImageTransformer2DModel
with two blocks; the scheduler Qwen-Image's flow-matching config (resolution-dependent shifting). Weights depend only
on `seed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cadence.models.tiny_common import save_pipeline, seeded

log = logging.getLogger(__name__)

TEXT_DIM = 32  # Qwen2.5-VL text hidden size = the transformer's joint_attention_dim


def _text_encoder():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from cadence.models.tiny_vlm import SPECIAL_TOKENS, build_vlm_tokenizer
    from cadence.models.tiny_vlm import _config as vlm_config  # the captioner's tiny Qwen2.5-VL config

    tokenizer = build_vlm_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = vlm_config("qwen2_5_vl", len(tokenizer), ids)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer


def _vae(gen: torch.Generator):
    from diffusers import AutoencoderKLQwenImage

    mean = (torch.randn(16, generator=gen) * 0.3).tolist()
    std = (torch.rand(16, generator=gen) * 1.5 + 0.5).tolist()
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[round(v, 4) for v in mean],
        latents_std=[round(v, 4) for v in std],
    ).eval()


def _transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,  # 16 latent channels x 2x2 packing
        out_channels=16,
        num_layers=2,  # two blocks: block swap keeps one resident
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler_config.json
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )


def build_tiny_qwen_image(seed: int = 0):
    from diffusers import QwenImagePipeline

    with seeded(seed):
        gen = torch.Generator().manual_seed(seed)
        text_encoder, tokenizer = _text_encoder()
        return QwenImagePipeline(
            scheduler=_scheduler(),
            vae=_vae(gen),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=_transformer(),
        )


def write_tiny_qwen_image(path: Path, arch: str = "qwen_image", seed: int = 0) -> Path:
    """Write a complete tiny Diffusers Qwen-Image folder at `path` (created if needed) and return it."""
    return save_pipeline(build_tiny_qwen_image(seed), path, arch)
