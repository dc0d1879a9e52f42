"""Tiny random-weight Wan pipelines, written as complete Diffusers folders.

Tests, the demo and CI train on these exactly as on a real model: the folder is produced by the diffusers
pipeline's own `save_pretrained`, so `WanPipeline`/`WanImageToVideoPipeline.from_pretrained` and Cadence's
loader read it through the same code path as a downloaded Wan folder. Dimensions are the smallest that keep
every code path alive (rotary split, image cross-attention, residual 2.2 VAE) so a training step costs
milliseconds on a CPU. Weights are fp32 and depend only on `seed`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cadence.models.tokenizer import build_tokenizer, vocab_size
from cadence.models.wan_family import ARCHS as WAN_ARCHS

log = logging.getLogger(__name__)


TEXT_DIM = 32
HEADS = 2
HEAD_DIM = 12  # rotary splits head_dim into t/h/w parts; 12 -> 4/4/4
CLIP_HIDDEN = 16
CLIP_IMAGE = 32
ARCHS = tuple(
    WAN_ARCHS
)  # the Wan archs (other families' tiny folders: tiny_flux.py, tiny_qwen_image.py, ...)
SHIFT = {"wan21": 3.0, "wan21_i2v": 3.0, "wan22_14b": 12.0, "wan22_14b_i2v": 5.0, "wan22_5b": 5.0}
# written into model_index.json as real A14B folders do
BOUNDARY = {a: s.default_boundary for a, s in WAN_ARCHS.items() if s.two_experts}


def t5_config(config_class):
    """A tiny T5-family encoder config over `tokenizer.py`'s vocabulary (Wan's UMT5, FLUX.1's T5)."""
    return config_class(
        vocab_size=vocab_size() + 4,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(t5_config(UMT5Config)).eval()


def _transformer(arch: str):
    from diffusers import WanTransformer3DModel

    in_ch, out_ch = {"wan22_5b": (48, 48), "wan21_i2v": (36, 16), "wan22_14b_i2v": (36, 16)}.get(
        arch, (16, 16)
    )
    image = arch == "wan21_i2v"
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=in_ch,
        out_channels=out_ch,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=CLIP_HIDDEN if image else None,
        added_kv_proj_dim=HEADS * HEAD_DIM if image else None,
        rope_max_seq_len=1024,
    ).eval()


def _vae(arch: str, gen: torch.Generator):
    from diffusers import AutoencoderKLWan

    if arch != "wan22_5b":  # Wan 2.1 VAE layout (also used by the 2.2 A14B models); real latent stats
        return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1).eval()
    # Wan 2.2 VAE: residual blocks, 2x2 pixel patchify, 16x spatial compression, 48 latent channels.
    mean = (torch.randn(48, generator=gen) * 0.3).tolist()
    std = (torch.rand(48, generator=gen) * 1.5 + 0.5).tolist()
    return AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=48,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=[round(v, 4) for v in mean],
        latents_std=[round(v, 4) for v in std],
    ).eval()


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=CLIP_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=CLIP_IMAGE,
        patch_size=16,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}
    )
    return CLIPVisionModel(cfg).eval(), processor


def _scheduler(arch: str):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=SHIFT[arch],
    )


def build_tiny_pipeline(arch: str, seed: int = 0):
    """Build the diffusers pipeline object for `arch` with tiny random weights from `seed`."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    parts = dict(
        tokenizer=build_tokenizer(),
        text_encoder=_text_encoder(),
        vae=_vae(arch, gen),
        scheduler=_scheduler(arch),
        transformer=_transformer(arch),
    )
    if arch in BOUNDARY:
        parts["transformer_2"] = _transformer(arch)
        parts["boundary_ratio"] = BOUNDARY[arch]
    if arch == "wan21_i2v":
        parts["image_encoder"], parts["image_processor"] = _image_encoder()
    if arch in ("wan21_i2v", "wan22_14b_i2v"):
        return WanImageToVideoPipeline(**parts)
    if arch == "wan22_5b":
        parts["expand_timesteps"] = True  # TI2V-5B ships as a WanPipeline folder with per-token timesteps
    return WanPipeline(**parts)


def write_tiny_model(path: Path, arch: str, seed: int = 0) -> Path:
    """Write a complete Diffusers folder for `arch` (any registered family) at `path` and return it."""
    path = Path(path)
    if arch not in ARCHS:
        from cadence.models.registry import family_of

        return family_of(arch).write_tiny(path, arch, seed)
    pipe = build_tiny_pipeline(arch, seed)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(path), safe_serialization=True)
    log.info("wrote tiny %s model to %s", arch, path)
    return path


def tiny_model_command(args: argparse.Namespace) -> int:
    """CLI: `cadence tiny-model DIR --arch ARCH [--seed N]`; prints the folder path. Every registered arch
    writes a Diffusers folder; the captioning VLM archs (qwen2_5_vl, qwen3_vl) write a transformers folder
    for `cadence caption` (tiny_vlm.py)."""
    from cadence.models.registry import ARCHS as ALL_ARCHS
    from cadence.models.tiny_vlm import VLM_ARCHS, write_tiny_vlm

    if args.arch not in ALL_ARCHS and args.arch not in VLM_ARCHS:
        sys.stderr.write(f"error: --arch {args.arch!r} is not one of {', '.join((*ALL_ARCHS, *VLM_ARCHS))}\n")
        return 2
    writer = write_tiny_vlm if args.arch in VLM_ARCHS else write_tiny_model
    out = writer(Path(args.dir), args.arch, seed=int(args.seed))
    sys.stdout.write(f"{out}\n")
    return 0
