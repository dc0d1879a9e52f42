"""`cadence cache CONFIG`: encode VAE latents (+ I2V conditioning) and text embeddings, nothing else.

Every dataset's latents are cached (the user asked for caching explicitly), and the text embeddings of
every caption plus the empty caption used by caption dropout. Files that cannot be decoded are listed and
skipped; the exit code is 0 as long as the config and the model load (1 otherwise), so a long caching run
is never thrown away because of one bad clip.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from cadence.config.schema import JobConfig
from cadence.data.cache import CacheReport, LatentCache, TextCache
from cadence.data.dataset import DatasetIndex, build_dataset_index
from cadence.data.media import DatasetError

log = logging.getLogger(__name__)


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pick_device(cfg: JobConfig) -> tuple[torch.device, torch.dtype]:
    """cuda when the config says so (or "auto" with a GPU present), else cpu in float32."""
    wanted = cfg.device.lower()
    use_cuda = wanted.startswith("cuda") or (wanted == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu"), torch.float32
    dtype = {"fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32,
             "float32": torch.float32}.get(cfg.train.dtype, torch.bfloat16)
    return torch.device("cuda" if wanted == "auto" else wanted), dtype


def text_cache_for(cfg: JobConfig, model_id: str) -> TextCache:
    return TextCache(Path(cfg.run_dir) / "text_cache", model_id)


def captions_to_cache(index: DatasetIndex) -> list[str]:
    """Every distinct caption of the index plus "" (the caption-dropout / unconditional caption)."""
    return list(dict.fromkeys([it.caption for it in index.items] + [""]))


def run_caches(cfg: JobConfig, adapter: object, index: DatasetIndex,
               show_progress: bool = True) -> tuple[CacheReport, CacheReport]:
    """Fill both caches for `index`; returns (latent report, text report)."""
    latents = LatentCache.for_adapter(adapter)
    with tqdm(total=len(index.items), desc="latents", unit="item", disable=not show_progress) as bar:
        latent_report = latents.ensure(index.items, adapter, progress=lambda _s: bar.update(1))
    captions = captions_to_cache(index)
    text = text_cache_for(cfg, adapter.model_id)  # type: ignore[attr-defined]
    with tqdm(total=len(captions), desc="text", unit="caption", disable=not show_progress) as bar:
        text_report = text.ensure(captions, adapter, progress=lambda _s: bar.update(1))
    return latent_report, text_report


def print_summary(index: DatasetIndex, latent: CacheReport, text: CacheReport) -> None:
    skipped = index.skipped + latent.skipped
    _out(f"latents: {latent.encoded} encoded, {latent.reused} reused, {len(skipped)} skipped")
    for folder in sorted(latent.folders):
        _out(f"  {folder}")
    _out(f"text embeddings: {text.encoded} encoded, {text.reused} reused")
    for folder in sorted(text.folders):
        _out(f"  {folder}")
    if skipped:
        _out(f"skipped files ({len(skipped)}):")
        for entry in skipped:
            _out(f"  {entry.path}: {entry.reason}")


def cache_command(args: argparse.Namespace) -> int:
    from cadence.config.loader import load_config
    from cadence.models.registry import load_model_adapter

    try:
        cfg = load_config(args.config)
    except Exception as exc:  # noqa: BLE001 - ConfigError and file errors alike are printed for the user
        _out(f"error: {exc}")
        return 1
    device, dtype = pick_device(cfg)
    try:
        adapter = load_model_adapter(cfg.model, device, dtype)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError, OSError from from_pretrained, ...
        _out(f"error: cannot load model {cfg.model.name_or_path!r}: {exc}")
        return 1
    try:
        index = build_dataset_index(cfg, adapter.spatial_multiple, adapter.temporal_multiple,
                                    adapter.native_fps, cfg.train.seed)
    except DatasetError as exc:
        _out(f"error: {exc}")
        return 1
    latent, text = run_caches(cfg, adapter, index)
    print_summary(index, latent, text)
    return 0
