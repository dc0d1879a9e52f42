"""musubi-tuner dataset files (`[general]` + `[[datasets]]` TOML or JSON) as Cadence datasets.

A job's `datasets:` may name such a file (or `cadence train/validate/cache --dataset-config FILE` does);
each musubi dataset becomes one Cadence dataset, key by key (`MAPPING` is the table docs/config.md embeds).
Keys follow musubi-tuner's own lookup: a dataset's value, else `[general]`'s, else musubi's default; keys
musubi itself does not know are errors, keys Cadence cannot honour are refused with the reason, and a key
that musubi ignores in that dataset (e.g. `frame_stride` without `slide`) is dropped with a warning.

Semantics kept from musubi-tuner (dataset/config_utils.py, image_video_dataset.py): without `source_fps`
frame counts are decoded source frames (Cadence `fps: source`); with it, frames are resampled to Wan's
16 fps first (Cadence `fps: 16`, each clip's rate read from the file, not from `source_fps`); `target_frames`
are rounded down to 4k+1; `uniform` with `frame_sample = 1` is `head`; `full` ignores `target_frames`;
`cache_directory` unset means a cache shared beside the media. Paths are relative to the dataset file.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

log = logging.getLogger(__name__)

WAN_TARGET_FPS = 16.0  # musubi-tuner's VideoDataset.TARGET_FPS_WAN
_MODES = ("head", "chunk", "slide", "uniform", "full")
GENERAL_KEYS = (
    "caption_extension",
    "batch_size",
    "num_repeats",
    "resolution",
    "enable_bucket",
    "bucket_no_upscale",
)
_BOTH = ("cache_directory", "control_directory")
VIDEO_KEYS = (
    "video_directory",
    "video_jsonl_file",
    "target_frames",
    "frame_extraction",
    "frame_stride",
    "frame_sample",
    "max_frames",
    "source_fps",
    "fp_latent_window_size",
)
IMAGE_KEYS = (
    "image_directory",
    "image_jsonl_file",
    "multiple_target",
    "fp_latent_window_size",
    "fp_1f_clean_indices",
    "fp_1f_target_index",
    "fp_1f_no_post",
    "no_resize_control",
    "control_resolution",
)
# keys refused whatever their value (reason, what to do)
_REFUSED = {
    "video_jsonl_file": "metadata JSONL lists are not read by Cadence; put the clips in a folder with same-stem "
    "caption files and use video_directory",
    "image_jsonl_file": "metadata JSONL lists are not read by Cadence; put the images in a folder with same-stem "
    "caption files and use image_directory",
    "control_directory": "musubi-tuner's control videos/images condition control and edit models frame by frame; "
    "Cadence's image-to-video condition is one first-frame image per clip: set datasets[].control_path in the "
    "job config (a folder of images named like the clips) instead",
}
# keys accepted at the value musubi-tuner treats as off (for Wan); any other value is refused
_INERT = {
    "fp_1f_clean_indices": (None, "FramePack one-frame training; Cadence trains Wan"),
    "fp_1f_target_index": (None, "FramePack one-frame training; Cadence trains Wan"),
    "fp_1f_no_post": (False, "FramePack one-frame training; Cadence trains Wan"),
    "multiple_target": (False, "Qwen-Image-Layered layer targets; Cadence trains Wan"),
    "no_resize_control": (False, "only used with control_directory (refused)"),
    "control_resolution": (None, "only used with control_directory (refused)"),
}

# (musubi key, Cadence setting, what differs) - the table in docs/config.md
MAPPING: list[tuple[str, str, str]] = [
    ("[general]", "every dataset", "a dataset's own value wins, then [general], then musubi's default"),
    (
        "video_directory",
        "`folder_path`, `media: videos`",
        "relative to the dataset file (musubi: the working folder)",
    ),
    ("image_directory", "`folder_path`, `media: images`", "relative to the dataset file"),
    (
        "cache_directory",
        "`cache_directory` (unset: `cache_latents_to_disk: true`)",
        "Cadence's own entries in "
        "`{cache_directory}/{arch}/{folder}_{hash}/`; musubi's cache files are not read; datasets may share "
        "one (musubi refuses that: Cadence's entries are per window)",
    ),
    ("target_frames", "`num_frames` (a list)", "rounded down to 4k+1, as musubi does (a warning names them)"),
    ("frame_extraction", "`frame_extraction`", "same modes: head, chunk, slide, uniform, full"),
    ("frame_stride", "`frame_stride`", "slide only (dropped with a warning elsewhere, as musubi ignores it)"),
    ("frame_sample", "`frame_sample`", "uniform only; uniform with 1 is head, as in musubi"),
    ("max_frames", "`max_frames`", "full only; a longer clip keeps its first max_frames (musubi's rule)"),
    (
        "source_fps",
        "`fps: 16` (unset: `fps: source`)",
        "resampled to Wan's 16 fps at each clip's real rate, "
        "read from the file; unset: every source frame, as musubi",
    ),
    (
        "resolution",
        "`max_pixels_per_frame: W*H` (with enable_bucket), else `fixed_size: [W, H]`",
        "a number means [n, n]; musubi's default [960, 544]",
    ),
    (
        "enable_bucket",
        "buckets of `max_pixels_per_frame` / `fixed_size`",
        "Cadence keeps the exact aspect "
        "ratio (musubi picks the nearest of its bucket list); musubi's default false crops every file to W x H",
    ),
    (
        "bucket_no_upscale",
        "`bucket_upscale: not bucket_no_upscale`",
        "only with enable_bucket (ignored without, by musubi too)",
    ),
    ("caption_extension", "`caption_ext`", "unset: txt (musubi needs it set)"),
    ("batch_size", "`train.batch_size`", "one for the whole job: datasets that differ are refused"),
    ("num_repeats", "`num_repeats`", "same"),
    ("control_directory", "refused", _REFUSED["control_directory"]),
    ("video_jsonl_file, image_jsonl_file", "refused", "metadata JSONL lists are not read; use a folder"),
    (
        "fp_1f_*, multiple_target, no_resize_control, control_resolution",
        "accepted at musubi's default only",
        "FramePack/Qwen/edit-model settings musubi ignores for Wan",
    ),
    ("fp_latent_window_size", "dropped (a warning says so)", "FramePack's window: musubi ignores it for Wan"),
]


@dataclass
class MappedDatasets:
    """Cadence dataset dicts from one musubi file, plus what the job's train section must take."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int | None = None
    issues: list[tuple[str, str]] = field(default_factory=list)  # (where in the file, message)
    warnings: list[str] = field(default_factory=list)


def read_dataset_file(path: Path) -> dict[str, Any]:
    """Parse a musubi dataset file (.toml or .json, as musubi-tuner reads them)."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(
            f"a musubi-tuner dataset config is a .toml or .json file, got '{path.suffix or '(none)'}'"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(
            "file not found; check the path (relative paths start at the job config's folder)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the file: {exc}") from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"parse error: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("the top level must be a table with [general] and [[datasets]]")
    return data


def map_dataset_file(path: Path) -> MappedDatasets:
    """Read and map one musubi dataset file; every problem is an issue naming the key in that file."""
    out = MappedDatasets()
    try:
        data = read_dataset_file(path)
    except ValueError as exc:
        out.issues.append((str(path), str(exc)))
        return out
    _Mapper(path, out).run(data)
    for line in out.warnings:
        log.warning("%s: %s", path, line)
    return out


class _Mapper:
    def __init__(self, path: Path, out: MappedDatasets) -> None:
        self.path = path
        self.base = path.parent
        self.out = out
        self.sizes: dict[int, str] = {}  # batch size -> where it was set

    def issue(self, where: str, message: str) -> None:
        self.out.issues.append((f"{self.path}: {where}", message))

    def run(self, data: dict[str, Any]) -> None:
        for key in data:
            if key not in ("general", "datasets"):
                self.issue(
                    key,
                    f"unknown top-level key '{key}'; a musubi-tuner dataset config has [general] "
                    "and [[datasets]]",
                )
        general = data.get("general", {})
        if not isinstance(general, dict):
            self.issue("general", "expected a table ([general])")
            general = {}
        for key in general:
            if key not in GENERAL_KEYS:
                self.issue(
                    f"general.{key}",
                    f"'{key}' is not a [general] key of musubi-tuner (it would refuse it "
                    f"too); [general] takes {', '.join(GENERAL_KEYS)}",
                )
        entries = data.get("datasets")
        if not isinstance(entries, list) or not entries:
            self.issue("datasets", "no [[datasets]] entries; add one with video_directory or image_directory")
            return
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.issue(f"datasets[{i}]", "expected a table ([[datasets]])")
                continue
            mapped = _Dataset(self, i, entry, general).map()
            if mapped is not None:
                self.out.datasets.append(mapped)
        if len(self.sizes) > 1:
            where = ", ".join(f"{size} ({at})" for size, at in sorted(self.sizes.items()))
            self.issue(
                "batch_size",
                f"datasets ask for different batch sizes ({where}); Cadence has one "
                "train.batch_size for the job: give every dataset the same one",
            )
        elif self.sizes:
            self.out.batch_size = next(iter(self.sizes))
        self._check_valid()

    def _check_valid(self) -> None:
        """Validate the mapped datasets now, so an error names the musubi key the user wrote."""
        from cadence.config.schema import DatasetConfig

        for i, ds in enumerate(self.out.datasets):
            try:
                DatasetConfig.model_validate({k: v for k, v in ds.items() if not k.startswith("_")})
            except ValidationError as exc:
                names = ds.get("_from", {})
                for err in exc.errors(include_url=False):
                    key = str(err["loc"][0]) if err["loc"] else ""
                    self.issue(
                        f"datasets[{i}].{names.get(key, key)}".rstrip("."),
                        f"becomes Cadence's {key or 'dataset'}: {err['msg'].removeprefix('Value error, ')}",
                    )
        if self.out.issues:
            self.out.datasets = []
        for ds in self.out.datasets:
            ds.pop("_from", None)


class _Dataset:
    """One [[datasets]] entry with [general] and musubi's defaults behind it."""

    def __init__(self, mapper: _Mapper, i: int, entry: dict[str, Any], general: dict[str, Any]) -> None:
        self.m = mapper
        self.i = i
        self.entry = entry
        self.general = general
        self.video = "video_directory" in entry or "video_jsonl_file" in entry
        self.ok = True
        self.out: dict[str, Any] = {"_from": {}}

    def where(self, key: str) -> str:
        return f"datasets[{self.i}].{key}" if key in self.entry else f"general.{key}"

    def get(self, key: str, default: Any = None) -> Any:
        """musubi-tuner's lookup: the dataset, then [general], then the default (None counts as unset)."""
        for source in (self.entry, self.general):
            if source.get(key) is not None:
                return source[key]
        return default

    def fail(self, key: str, message: str) -> None:
        self.ok = False
        self.m.issue(self.where(key), message)

    def put(self, cadence_key: str, value: Any, musubi_key: str) -> None:
        self.out[cadence_key] = value
        self.out["_from"][cadence_key] = musubi_key

    def map(self) -> dict[str, Any] | None:
        kind_keys = VIDEO_KEYS if self.video else IMAGE_KEYS
        other = IMAGE_KEYS if self.video else VIDEO_KEYS
        mine, theirs = ("a video", "an image") if self.video else ("an image", "a video")
        folder = "video_directory" if self.video else "image_directory"
        for key in self.entry:
            if key in GENERAL_KEYS or key in _BOTH or key in kind_keys or key in _REFUSED:
                continue
            if key in other:
                self.fail(key, f"'{key}' is {theirs} dataset key; this dataset is {mine} dataset ({folder})")
            else:
                self.fail(
                    key, f"'{key}' is not a musubi-tuner dataset key (musubi-tuner would refuse it too)"
                )
        for key, reason in _REFUSED.items():
            if key in self.entry:
                self.fail(key, f"'{key}' is a valid musubi-tuner key but not supported by Cadence: {reason}")
        for key, (inert, reason) in _INERT.items():
            if self.entry.get(key, inert) != inert:
                self.fail(
                    key, f"'{key} = {self.entry[key]!r}' is not supported by Cadence: {reason}; remove it"
                )
        if "fp_latent_window_size" in self.entry:  # any value: musubi-tuner reads it for FramePack only
            self.m.out.warnings.append(
                f"{self.where('fp_latent_window_size')}: FramePack's latent window does nothing for Wan "
                "(musubi-tuner ignores it there too); dropped"
            )
        self._folder()
        self._common()
        if self.video:
            self._frames()
        else:
            self.put("media", "images", "image_directory")
        return self.out if self.ok else None

    def _path(self, key: str) -> Path | None:
        value = self.entry.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, f"got {value!r}; expected a folder path")
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.m.base / path).resolve()

    def _folder(self) -> None:
        key = "video_directory" if self.video else "image_directory"
        folder = self._path(key)
        if folder is None:
            if key not in self.entry and f"{key[:5]}_jsonl_file" not in self.entry:
                self.ok = False
                self.m.issue(
                    f"datasets[{self.i}]", "the dataset has neither video_directory nor image_directory"
                )
            return
        self.put("folder_path", str(folder), key)
        if self.video:
            self.put("media", "videos", key)
        cache = self._path("cache_directory")
        if cache is not None:
            self.put("cache_directory", str(cache), "cache_directory")
        else:  # musubi caches beside the media (cache_directory defaults to the media folder)
            self.put("cache_latents_to_disk", True, key)

    def _int(self, key: str, default: int) -> int | None:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"got {value!r}; expected a whole number")
            return None
        return value

    def _common(self) -> None:
        ext = self.get("caption_extension")
        if ext is not None:
            if not isinstance(ext, str):
                self.fail("caption_extension", f'got {ext!r}; expected text such as ".txt"')
            else:
                self.put("caption_ext", ext, "caption_extension")
        repeats = self._int("num_repeats", 1)
        if repeats is not None:
            self.put("num_repeats", repeats, "num_repeats")
        size = self._int("batch_size", 1)
        if size is not None and self.get("batch_size") is not None:
            self.m.sizes.setdefault(size, self.where("batch_size"))
        self._buckets()

    def _buckets(self) -> None:
        value = self.get("resolution", [960, 544])
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if (
            not isinstance(value, list)
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
        ):
            self.fail("resolution", f"got {value!r}; expected [width, height] or one number")
            return
        width, height = value
        bucket = self.get("enable_bucket", False)
        no_upscale = self.get("bucket_no_upscale", False)
        if not isinstance(bucket, bool) or not isinstance(no_upscale, bool):
            self.fail("enable_bucket", "enable_bucket and bucket_no_upscale are true or false")
            return
        if bucket:
            self.put("max_pixels_per_frame", width * height, "resolution")
            self.put("bucket_upscale", not no_upscale, "bucket_no_upscale")
        else:
            self.put("fixed_size", [width, height], "resolution")
            if no_upscale:
                self.m.out.warnings.append(
                    f"{self.where('bucket_no_upscale')}: does nothing without enable_bucket (musubi-tuner ignores "
                    f"it too); every file is cropped to {width}x{height}"
                )

    def _frames(self) -> None:
        mode = self.get("frame_extraction", "head")
        if mode not in _MODES:
            self.fail("frame_extraction", f"got {mode!r}; musubi-tuner's modes are {', '.join(_MODES)}")
            return
        stride, sample = self._int("frame_stride", 1), self._int("frame_sample", 1)
        max_frames = self._int("max_frames", 129)
        if stride is None or sample is None or max_frames is None:
            return
        if mode == "uniform" and sample == 1:
            mode = "head"  # musubi-tuner switches too (with a warning): one window at the start
            self.m.out.warnings.append(f"{self.where('frame_sample')}: uniform with frame_sample 1 is head")
        self.put("frame_extraction", mode, "frame_extraction")
        for key, owner, value, default, cadence in (
            ("frame_stride", "slide", stride, 1, "frame_stride"),
            ("frame_sample", "uniform", sample, 1, "frame_sample"),
            ("max_frames", "full", max_frames, 129, "max_frames"),
        ):
            if mode == owner:
                self.put(cadence, value, key)
            elif self.get(key) is not None and value != default:
                self.m.out.warnings.append(
                    f"{self.where(key)} = {value} does nothing with frame_extraction {mode} (musubi-tuner ignores it "
                    "too); dropped"
                )
        self._lengths(mode)
        fps = self.get("source_fps")
        if fps is None:
            self.put("fps", "source", "source_fps")
        elif isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
            self.fail("source_fps", f"got {fps!r}; expected a frame rate such as 30.0")
        else:
            self.put("fps", WAN_TARGET_FPS, "source_fps")

    def _lengths(self, mode: str) -> None:
        frames = self.get("target_frames", [1])
        if (
            not isinstance(frames, list)
            or not frames
            or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in frames)
        ):
            self.fail("target_frames", f"got {frames!r}; expected a list of frame counts such as [1, 25, 45]")
            return
        if mode == "full":
            if self.get("target_frames") is not None:
                self.m.out.warnings.append(
                    f"{self.where('target_frames')}: frame_extraction full ignores target_frames (musubi-tuner "
                    "too); each clip is one window of up to max_frames"
                )
            return
        rounded = sorted({(f - 1) // 4 * 4 + 1 for f in frames})
        if rounded != sorted(set(frames)):
            self.m.out.warnings.append(
                f"{self.where('target_frames')} {frames} rounded down to 4k+1: {rounded} (as musubi-tuner does)"
            )
        self.put("num_frames", rounded, "target_frames")


def mapping_markdown() -> str:
    """MAPPING as the Markdown table docs/config.md embeds (a test keeps them in sync)."""
    rows = ["| musubi-tuner | Cadence | notes |", "|---|---|---|"]
    rows += [f"| `{musubi}` | {cadence} | {note} |" for musubi, cadence, note in MAPPING]
    return "\n".join(rows)


def expand_dataset_file(
    body: dict[str, Any], base: Path | None, override: str | Path | None = None
) -> list[tuple[tuple[str | int, ...] | str, str]]:
    """Replace `datasets:` naming a musubi dataset file (or the `--dataset-config` file) by its datasets, in
    place; returns the issues (file problems name the file and its key)."""
    value = body.get("datasets")
    if override is not None:
        if value:
            log.warning("--dataset-config %s replaces the datasets of the job config", override)
        path = Path(override).expanduser().resolve()
    elif isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = (base / path).resolve()
    else:
        return []
    mapped = map_dataset_file(path)
    body["datasets"] = mapped.datasets
    issues: list[tuple[tuple[str | int, ...] | str, str]] = list(mapped.issues)
    if mapped.batch_size is not None:
        train = body.setdefault("train", {})
        if isinstance(train, dict):
            mine = train.get("batch_size")
            if mine is not None and mine != mapped.batch_size:
                issues.append(
                    (
                        ("train", "batch_size"),
                        f"is {mine!r} but the dataset config {path} sets batch_size = {mapped.batch_size}; keep "
                        "one of the two",
                    )
                )
            train["batch_size"] = mapped.batch_size
    return issues
