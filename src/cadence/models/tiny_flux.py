"""Tiny random-weight FLUX.1 pipelines (dev: guidance-distilled; schnell: no guidance embedding), written as
complete Diffusers folders by `FluxPipeline.save_pretrained`, so `FluxPipeline.from_pretrained` and Cadence's
loader read them like a downloaded FLUX.1 folder.

Every part is real and tiny: a CLIP text model and its BPE tokenizer, a T5 encoder with the T5-style tokenizer
(`tokenizer.py`, both built offline with the `tokenizers` library), FLUX's 16-channel AutoencoderKL with its
scaling/shift factors, a FluxTransformer2DModel with one double and one single block, and FLUX's
flow-matching scheduler config (dev: resolution-dependent shifting; schnell: shift 1). Weights depend only on
`seed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cadence.models.tiny import TEXT_DIM, t5_config
from cadence.models.tiny_common import autoencoder_kl, save_pipeline, seeded
from cadence.models.tokenizer import build_clip_tokenizer, build_tokenizer

log = logging.getLogger(__name__)

CLIP_DIM = 32  # CLIP hidden size = the transformer's pooled_projection_dim
HEADS, HEAD_DIM = (
    4,
    16,
)  # rotary axes (4, 6, 6) split the head dim; inner 64 keeps every block Linear uint4-sized
GUIDANCE = {"flux": True, "flux_schnell": False}


def _clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_DIM,
        intermediate_size=64,
        projection_dim=CLIP_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg).eval(), tokenizer


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(t5_config(T5Config)).eval(), build_tokenizer()


def _transformer(arch: str):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=CLIP_DIM,
        guidance_embeds=GUIDANCE[arch],
        axes_dims_rope=(4, 6, 6),
    ).eval()


def _scheduler(arch: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if arch == "flux_schnell":  # FLUX.1-schnell's scheduler_config.json
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False
        )
    return FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build_tiny_flux(arch: str, seed: int = 0):
    """The FluxPipeline object for `arch` (flux | flux_schnell) with tiny random weights from `seed`."""
    from diffusers import FluxPipeline

    if arch not in GUIDANCE:
        raise ValueError(f"unknown FLUX arch {arch!r}; expected one of {', '.join(GUIDANCE)}")
    with seeded(seed):
        text_encoder, tokenizer = _clip()
        text_encoder_2, tokenizer_2 = _t5()
        return FluxPipeline(
            scheduler=_scheduler(arch),
            vae=autoencoder_kl(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=_transformer(arch),
        )


def write_tiny_flux(path: Path, arch: str = "flux", seed: int = 0) -> Path:
    """Write a complete tiny Diffusers FLUX.1 folder at `path` (created if needed) and return it."""
    return save_pipeline(build_tiny_flux(arch, seed), path, arch)
