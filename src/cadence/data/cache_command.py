"""`cadence cache CONFIG`: encode VAE latents (+ I2V conditioning) and text embeddings, nothing else.

Latents go where `cadence train` reads them (shared beside the media with cache_latents_to_disk, else in
the run folder), text embeddings of every caption plus the empty caption used by caption dropout (and the
sample prompts when sampling is on), all with the training device, dtype and quantization. Files that cannot be decoded are listed and
skipped; the exit code is 0 as long as the config and the model load (1 otherwise), so a long caching run
is never thrown away because of one bad clip.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cadence.config.schema import JobConfig
from cadence.data.augment import cache_units
from cadence.data.cache import CacheReport, LatentCache, TextCache
from cadence.data.dataset import DatasetIndex, build_dataset_index
from cadence.data.media import DatasetError
from cadence.data.motion_reference import ensure_motion_reference

log = logging.getLogger(__name__)


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def text_cache_for(cfg: JobConfig, model_id: str) -> TextCache:
    """The run's text cache; its fingerprint names the encoder variant (dtype, quantization)."""
    encoder = f"{cfg.train.dtype}|{cfg.model.qtype_te if cfg.model.quantize_te else 'none'}"
    return TextCache(Path(cfg.run_dir) / "text_cache", model_id, encoder=encoder)


def captions_to_cache(cfg: JobConfig, index: DatasetIndex) -> list[str]:
    """Every distinct caption plus "" (caption dropout) and, with sampling on, the sample prompts (they must
    survive the text encoder's unloading)."""
    captions = [it.caption for it in index.items] + [""]
    if not cfg.train.disable_sampling:
        from cadence.sampling import sample_texts

        captions += sample_texts(cfg)
    return list(dict.fromkeys(captions))


@dataclass
class FilledCaches:
    """The caches as training reads them, and what filling them did."""

    latents: LatentCache
    texts: TextCache
    latent_report: CacheReport
    text_report: CacheReport


def run_caches(
    cfg: JobConfig, adapter: object, index: DatasetIndex, show_progress: bool = True
) -> FilledCaches:
    """Fill both caches for `index` exactly as training reads them."""
    latents = LatentCache.for_job(cfg, adapter, Path(cfg.run_dir))
    units = cache_units(index.items)  # each temporal_jitter plan of a window is an entry of its own
    with tqdm(total=len(units), desc="latents", unit="item", disable=not show_progress) as bar:
        latent_report = latents.ensure(units, adapter, progress=lambda _s: bar.update(1))
    # the training clips' own motion, which the samples are compared with (measured once, kept with the cache)
    ensure_motion_reference(Path(cfg.run_dir), index.items, latents, adapter.native_fps)  # type: ignore[attr-defined]
    captions = captions_to_cache(cfg, index)
    texts = text_cache_for(cfg, adapter.model_id)  # type: ignore[attr-defined]
    with tqdm(total=len(captions), desc="text", unit="caption", disable=not show_progress) as bar:
        text_report = texts.ensure(captions, adapter, progress=lambda _s: bar.update(1))
    return FilledCaches(latents, texts, latent_report, text_report)


def print_summary(index: DatasetIndex, latent: CacheReport, text: CacheReport) -> None:
    skipped = index.skipped + latent.skipped
    _out(index.summary())  # items per frame_extraction mode
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
    from cadence.perf import apply_quantization
    from cadence.train.precision import resolve_device, resolve_dtype

    try:
        cfg = load_config(args.config, getattr(args, "dataset_config", None))
    except Exception as exc:  # noqa: BLE001 - ConfigError and file errors alike are printed for the user
        _out(f"error: {exc}")
        return 1
    try:
        # the same device, dtype and text-encoder quantization as `cadence train`, so training reuses every
        # entry; the transformers are not used here, so they are neither quantized nor given their adapter
        adapter = load_model_adapter(cfg.model, resolve_device(cfg.device), resolve_dtype(cfg.train.dtype))
        apply_quantization(adapter, cfg.model, transformers=False)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError, OSError from from_pretrained, ...
        _out(f"error: cannot load model {cfg.model.name_or_path!r}: {exc}")
        return 1
    try:
        index = build_dataset_index(
            cfg, adapter.spatial_multiple, adapter.temporal_multiple, adapter.native_fps, cfg.train.seed
        )
    except DatasetError as exc:
        _out(f"error: {exc}")
        return 1
    filled = run_caches(cfg, adapter, index)
    print_summary(index, filled.latent_report, filled.text_report)
    return 0
