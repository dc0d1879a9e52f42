"""What the tiny image-family folders share: a seeded build (the global RNG restored after), the 16-channel
AutoencoderKL that FLUX.1 and Z-Image both ship (with FLUX's scaling and shift factors), and the writer that
saves a pipeline with its own `save_pretrained`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Random weights from `seed` only, leaving the caller's global torch RNG as it was."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        torch.random.set_rng_state(state)


def autoencoder_kl():
    """A tiny 16-channel AutoencoderKL with 8x compression (4 blocks) and FLUX.1's latent factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def save_pipeline(pipe, path: Path, arch: str) -> Path:
    """`pipe.save_pretrained(path)` (created if needed) as a complete Diffusers folder; returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(path), safe_serialization=True)
    log.info("wrote tiny %s model to %s", arch, path)
    return path
