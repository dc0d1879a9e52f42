"""Tiny random-weight Z-Image pipelines, written as complete Diffusers folders by `ZImagePipeline.save_pretrained`,
so `ZImagePipeline.from_pretrained` and Cadence's loader read them like a downloaded Z-Image folder.

The text encoder is a real Qwen3 model (transformers' class, two tiny layers) with the byte-level BPE tokenizer and
chat template of `tiny_vlm.py`; the VAE is the 16-channel AutoencoderKL with FLUX's scaling/shift factors, as
Z-Image ships it; the transformer a ZImageTransformer2DModel with one refiner layer of each kind and one main layer;
the scheduler flow-matching Euler with Z-Image's fixed shift 3. Weights depend only on `seed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cadence.models.tiny_common import autoencoder_kl, save_pipeline, seeded

log = logging.getLogger(__name__)

TEXT_DIM = 32  # Qwen3 hidden size = the transformer's cap_feat_dim


def _text_encoder():
    from transformers import Qwen3Config, Qwen3Model

    from cadence.models.tiny_vlm import build_vlm_tokenizer

    tokenizer = build_vlm_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen3Model(config).eval(), tokenizer


def _transformer():
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=48,  # 3 heads x 16 (rotary axes 4/6/6); its FFN (8/3 x dim = 128) is uint4-sized
        n_layers=1,
        n_refiner_layers=1,
        n_heads=3,
        n_kv_heads=3,
        cap_feat_dim=TEXT_DIM,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    ).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def build_tiny_zimage(seed: int = 0):
    from diffusers import ZImagePipeline

    with seeded(seed):
        text_encoder, tokenizer = _text_encoder()
        return ZImagePipeline(
            scheduler=_scheduler(),
            vae=autoencoder_kl(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=_transformer(),
        )


def write_tiny_zimage(path: Path, arch: str = "zimage", seed: int = 0) -> Path:
    """Write a complete tiny Diffusers Z-Image folder at `path` (created if needed) and return it."""
    return save_pipeline(build_tiny_zimage(seed), path, arch)
