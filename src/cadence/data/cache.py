"""Latent and text-embedding caches: safetensors files whose metadata is a fingerprint of their inputs.

An entry is reused only when its stored fingerprint equals the one computed now (model id/revision, arch,
bucket, frame plan, source file size + mtime, I2V conditioning on/off; model id + caption for text), so a
changed input re-encodes and an unchanged one is read back. Entries are written atomically
(`cadence.atomic`), one file per item, so an interrupted run keeps everything finished before the
interruption and the next run continues from there (a resumed fill checks each window's entry first and
decodes only the missing ones). A file that fails to decode is skipped and reported; the run goes on. The
windows of one clip share a decode (`shared_decode.py`). Layout: docs/caching.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cadence.atomic import atomic_write_with, remove_stale_temporaries
from cadence.data.augment import flip_pixels
from cadence.data.controls import control_pixels
from cadence.data.media import CACHE_DIR_NAME, MediaError, MediaItem, SkippedFile
from cadence.data.shared_decode import decode_group, decode_groups

if TYPE_CHECKING:
    from cadence.models.base import ModelAdapter, TextEmbedding

log = logging.getLogger(__name__)

# 2: decoding changed (transparency flattened onto white, variable-rate Matroska timing, edit lists)
CACHE_FORMAT = "cadence-cache-2"
LATENTS_KEY = "latents"
TEXT_KEY = "embeds"  # a text embedding that is one tensor; a dict of tensors is stored as "embeds.<name>"
# temp files of a killed writer are removed when a cache is filled; younger ones may be a live writer's
# (caches can be shared between jobs), and no entry takes minutes to write
STALE_TEMP_S = 600.0
Progress = Callable[[str], None]  # called once per entry with "encoded" | "reused" | "skipped"


class CacheMissError(KeyError):
    """No valid cache entry for the request (absent, unreadable, or made from different inputs)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass
class CacheReport:
    encoded: int = 0
    reused: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)  # each failed file once, however many items
    folders: set[Path] = field(default_factory=set)

    def merge(self, other: CacheReport) -> CacheReport:
        seen = {entry.path for entry in self.skipped}
        return CacheReport(
            self.encoded + other.encoded,
            self.reused + other.reused,
            self.skipped + [entry for entry in other.skipped if entry.path not in seen],
            self.folders | other.folders,
        )


def read_fingerprint(path: Path) -> dict[str, str] | None:
    """The metadata of a cache file, or None when it is missing or unreadable (then it is re-encoded)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        log.warning("cache entry %s is unreadable (%s); it will be re-encoded", path, exc)
        return None


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def _adapter_device(adapter: object) -> torch.device:
    return torch.device(getattr(adapter, "device", "cpu"))


# ------------------------------------------------------------------------------------------------ latents
class LatentCache:
    """VAE latents (+ I2V conditioning tensors) per item, under {dataset folder}/_cadence_cache/{arch}/."""

    def __init__(
        self,
        model_id: str,
        arch: str,
        is_i2v: bool,
        run_folder: Path | None = None,
        shared_datasets: frozenset[int] | None = None,
        memory_datasets: frozenset[int] = frozenset(),
        cache_dirs: dict[int, Path] | None = None,
    ) -> None:
        self.model_id = model_id
        self.arch = arch
        self.is_i2v = is_i2v
        # Datasets with cache_latents_to_disk share one cache beside their media (reused by every run);
        # the others get a cache private to the run folder. None = every dataset shares (cadence cache).
        self.run_folder = run_folder
        self.shared_datasets = shared_datasets
        self.memory_datasets = memory_datasets  # cache_latents: keep loaded entries in RAM
        self.cache_dirs = cache_dirs or {}  # dataset index -> datasets[].cache_directory
        self._memory: dict[Path, dict[str, torch.Tensor]] = {}
        self.encode_calls = 0  # number of items actually run through the VAE by this object

    @classmethod
    def for_adapter(cls, adapter: ModelAdapter) -> LatentCache:
        ident = adapter.cache_identity()
        return cls(ident.model_id, ident.namespace, ident.conditions)

    @classmethod
    def for_job(cls, cfg: object, adapter: ModelAdapter, run_folder: Path) -> LatentCache:
        """The training cache: dataset flags cache_latents_to_disk / cache_latents decide where entries live."""
        datasets = cfg.datasets  # type: ignore[attr-defined]
        ident = adapter.cache_identity()
        return cls(
            ident.model_id,
            ident.namespace,
            ident.conditions,
            run_folder=run_folder,
            shared_datasets=frozenset(i for i, ds in enumerate(datasets) if ds.cache_latents_to_disk),
            memory_datasets=frozenset(i for i, ds in enumerate(datasets) if ds.cache_latents),
            cache_dirs={i: Path(ds.cache_directory) for i, ds in enumerate(datasets) if ds.cache_directory},
        )

    def folder(self, item: MediaItem) -> Path:
        source = hashlib.sha256(str(item.path.parent.resolve()).encode()).hexdigest()[:12]
        if item.dataset_index in self.cache_dirs:  # one subfolder per media folder: datasets may share it
            return self.cache_dirs[item.dataset_index] / self.arch / f"{item.path.parent.name}_{source}"
        if (
            self.shared_datasets is None
            or item.dataset_index in self.shared_datasets
            or self.run_folder is None
        ):
            return item.path.parent / CACHE_DIR_NAME / self.arch
        return self.run_folder / "latent_cache" / self.arch / f"{item.path.parent.name}_{source}"

    def path(self, item: MediaItem) -> Path:
        """Stable name per (model, file, bucket, frame plan): jobs on other models sharing the dataset folder
        keep their own entries; inputs that change in place overwrite the entry."""
        name = f"{self.model_id}|{item.path.name}|{item.bucket_name}|{item.frames_hash}"
        if item.flip:  # flip_x / flip_y copies; unflipped names are as before
            name += f"|flip_{item.flip}"
        key = hashlib.sha256(name.encode()).hexdigest()
        return self.folder(item) / f"{item.path.stem}_{item.bucket_name}_{key[:12]}.safetensors"

    def wants_condition(self, item: MediaItem) -> bool:
        return self.is_i2v and item.do_i2v

    def fingerprint(self, item: MediaItem) -> dict[str, str]:
        """The inputs of an entry: the window (source frame indices), file, bucket, model and condition."""
        control = {}
        if self.wants_condition(item) and item.control is not None:  # absent otherwise: older entries match
            control = {"control": f"{item.control.name}|{item.control_stamp}|{list(item.control_background)}"}
        return {
            "format": CACHE_FORMAT,
            "kind": "latents",
            "model_id": self.model_id,
            "arch": self.arch,
            "source": item.path.name,
            "bucket": item.bucket_name,
            "frames": item.frames_hash,
            "file_size": str(item.file_size),
            "mtime_ns": str(item.mtime_ns),
            "condition": "1" if self.wants_condition(item) else "0",
            **control,
            **({"flip": item.flip} if item.flip else {}),  # absent unflipped: older entries match
        }

    def is_valid(self, item: MediaItem) -> bool:
        return read_fingerprint(self.path(item)) == self.fingerprint(item)

    def store(self, item: MediaItem, tensors: dict[str, torch.Tensor]) -> Path:
        """Write one entry atomically: `latents` [C, F', h, w] plus any conditioning tensors."""
        if LATENTS_KEY not in tensors:
            raise ValueError(f"a latent cache entry needs a {LATENTS_KEY!r} tensor, got {sorted(tensors)}")
        path = self.path(item)
        _save(path, tensors, self.fingerprint(item))
        return path

    def load(self, item: MediaItem) -> dict[str, torch.Tensor]:
        """{"latents": [C, F', h, w], + conditioning tensors (I2V)}; CacheMissError when stale/absent."""
        path = self.path(item)
        if path in self._memory:
            return self._memory[path]
        if read_fingerprint(path) != self.fingerprint(item):
            raise CacheMissError(
                f"no up-to-date latent cache for {item.path} ({item.bucket_name}) at {path}; "
                "run `cadence cache CONFIG` or enable latent caching"
            )
        tensors = load_file(str(path))
        if item.dataset_index in self.memory_datasets:
            self._memory[path] = tensors
        return tensors

    def ensure(
        self, items: Sequence[MediaItem], adapter: object, progress: Progress | None = None
    ) -> CacheReport:
        """Encode every item without a valid entry; reuse the rest; skip (and report) undecodable files.
        Valid entries are checked first, so a resumed fill decodes only the windows still missing."""
        ident = adapter.cache_identity()  # type: ignore[attr-defined]
        if ident.model_id != self.model_id or ident.namespace != self.arch:
            raise ValueError(f"this cache is for {self.model_id} ({self.arch}), not {ident.model_id}")
        report = CacheReport()
        failed: set[Path] = set()  # files that failed in this pass; their other items are not decoded again
        for folder in {self.folder(item) for item in items}:
            remove_stale_temporaries(folder, STALE_TEMP_S)
        pending: list[MediaItem] = []
        for item in items:
            report.folders.add(self.folder(item))
            if self.is_valid(item):
                report.reused += 1
                if progress is not None:
                    progress("reused")
            else:
                pending.append(item)
        for group in decode_groups(pending):
            for status in self._encode_group(group, adapter, report, failed):
                if progress is not None:
                    progress(status)
        return report

    def _encode_group(
        self, group: list[MediaItem], adapter: object, report: CacheReport, failed: set[Path]
    ) -> Iterator[str]:
        """Encode the windows of one shared decode: "encoded" per item, or "skipped" for each when the file
        fails (reported once per file, not once per bucket size or window)."""
        path = group[0].path
        if path not in failed:
            try:
                for item, pixels in decode_group(group):
                    self.store(item, self.encode(item, pixels, adapter))
                    report.encoded += 1
                    yield "encoded"
                return
            except MediaError as exc:
                failed.add(path)
                report.skipped.append(SkippedFile(path, f"{exc.problem}; {exc.advice}"))
                log.warning("skipping %s", exc)
        for item in group:
            if not self.is_valid(item):  # encoded before the failure: already counted
                yield "skipped"

    @torch.no_grad()
    def encode(self, item: MediaItem, pixels: torch.Tensor, adapter: object) -> dict[str, torch.Tensor]:
        """Run the VAE (and the I2V conditioning of the window's first frame, or of its control image)."""
        # float32 pixels: the adapter casts to its VAE's dtype (bf16 pixels would lose precision first)
        batch = flip_pixels(pixels, item.flip)[None].to(device=_adapter_device(adapter), dtype=torch.float32)
        tensors = {LATENTS_KEY: adapter.encode_video(batch)[0]}  # type: ignore[attr-defined]
        if self.wants_condition(item):  # a flipped copy's condition is flipped with it
            control = None if item.control is None else flip_pixels(control_pixels(item), item.flip)
            first = batch[:, :, 0] if control is None else control[None].to(batch)
            cond = adapter.encode_condition(first, item.num_frames)  # type: ignore[attr-defined]
            for name, value in cond.items():
                if name == LATENTS_KEY:
                    raise ValueError(f"conditioning tensor name {name!r} clashes with the latents key")
                tensors[name] = value[0]
        self.encode_calls += 1
        return tensors


# ------------------------------------------------------------------------------------------------- text
def _text_tensors(embed: TextEmbedding) -> dict[str, torch.Tensor]:
    if isinstance(embed, dict):
        return {f"{TEXT_KEY}.{name}": value for name, value in embed.items()}
    return {TEXT_KEY: embed}


def _text_embedding(tensors: dict[str, torch.Tensor]) -> TextEmbedding:
    if TEXT_KEY in tensors:
        return tensors[TEXT_KEY]
    prefix = f"{TEXT_KEY}."
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}


class TextCache:
    """Text-encoder outputs per (model id, caption) under {run_dir}/text_cache/: what the adapter's
    `encode_prompts` gives (Wan: T5 states [L, D], unpadded; a family with several tensors: a dict of them)."""

    def __init__(self, folder: Path | str, model_id: str, batch_size: int = 8, encoder: str = "") -> None:
        self.folder = Path(folder)
        self.model_id = model_id
        self.batch_size = batch_size
        self.encoder = encoder  # text-encoder dtype/quantization: a different encoder re-encodes
        self._memory: dict[str, torch.Tensor] = {}
        self.encode_calls = 0  # number of captions actually run through the text encoder

    def path(self, caption: str) -> Path:
        digest = hashlib.sha256(f"{self.model_id}\0{self.encoder}\0{caption}".encode()).hexdigest()
        return self.folder / f"{digest[:32]}.safetensors"

    def fingerprint(self, caption: str) -> dict[str, str]:
        return {
            "format": CACHE_FORMAT,
            "kind": "text",
            "model_id": self.model_id,
            "encoder": self.encoder,
            "caption": caption,
        }

    def is_valid(self, caption: str) -> bool:
        return read_fingerprint(self.path(caption)) == self.fingerprint(caption)

    def load(self, caption: str) -> TextEmbedding:
        """Embeddings are small and read every step: after the first read they are served from memory."""
        if caption in self._memory:
            return self._memory[caption]
        path = self.path(caption)
        if read_fingerprint(path) != self.fingerprint(caption):
            raise CacheMissError(
                f"no text embedding cached for caption {caption[:60]!r} at {path}; "
                "run `cadence cache CONFIG` or enable train.cache_text_embeddings"
            )
        embeds = _text_embedding(load_file(str(path)))
        self._memory[caption] = embeds
        return embeds

    def ensure(
        self, captions: Iterable[str], adapter: object, progress: Progress | None = None
    ) -> CacheReport:
        """Encode each distinct caption without a valid entry, in batches; the rest are reused."""
        report = CacheReport(folders={self.folder})
        remove_stale_temporaries(self.folder, STALE_TEMP_S)
        todo: list[str] = []
        for caption in dict.fromkeys(captions):
            if self.is_valid(caption):
                report.reused += 1
                if progress is not None:
                    progress("reused")
            else:
                todo.append(caption)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            with torch.no_grad():
                embeds = adapter.encode_prompts(chunk)  # type: ignore[attr-defined]
            self.encode_calls += len(chunk)
            for caption, embed in zip(chunk, embeds, strict=True):
                _save(self.path(caption), _text_tensors(embed), self.fingerprint(caption))
                self._memory.pop(caption, None)
                report.encoded += 1
                if progress is not None:
                    progress("encoded")
        return report
