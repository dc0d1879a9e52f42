"""musubi-tuner dataset configs as `datasets:` (a path) or `--dataset-config`: key by key, with refusals."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from cadence.cli import main
from cadence.config import load_config
from cadence.config.errors import ConfigError
from cadence.config.musubi_dataset import GENERAL_KEYS, IMAGE_KEYS, MAPPING, VIDEO_KEYS, mapping_markdown

ROOT = Path(__file__).resolve().parents[2]

MUSUBI_TOML = """
[general]
resolution = [960, 544]
caption_extension = ".caption"
batch_size = 2
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
video_directory = "videos"
cache_directory = "cache/videos"
target_frames = [1, 25, 45]
frame_extraction = "head"
source_fps = 30.0

[[datasets]]
video_directory = "videos"
frame_extraction = "slide"
frame_stride = 10
target_frames = [17]
bucket_no_upscale = true

[[datasets]]
image_directory = "images"
num_repeats = 3
resolution = 512
enable_bucket = false
"""


def _job(tmp_path: Path, datasets: object = "dataset.toml", **extra: object) -> Path:
    job = {
        "name": "m",
        "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
        "datasets": datasets,
        "train": {"disable_sampling": True, **extra},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_musubi_file_maps_key_by_key(tmp_path, caplog):
    (tmp_path / "dataset.toml").write_text(MUSUBI_TOML)
    with caplog.at_level(logging.WARNING):
        cfg = load_config(_job(tmp_path))
    head, slide, images = cfg.datasets
    assert head.folder_path == tmp_path / "videos" and head.media == "videos"  # relative to the file
    assert head.cache_directory == tmp_path / "cache" / "videos" and not head.cache_latents_to_disk
    assert (head.frame_extraction, head.num_frames, head.fps) == ("head", [1, 25, 45], 16.0)  # source_fps
    assert head.max_pixels_per_frame == 960 * 544 and head.bucket_upscale  # bucket_no_upscale = false
    assert head.caption_ext == "caption" and head.fixed_size is None
    assert (slide.frame_extraction, slide.frame_stride, slide.num_frames) == ("slide", 10, [17])
    assert slide.fps == "source" and not slide.bucket_upscale  # no source_fps: every decoded frame
    assert slide.cache_latents_to_disk and slide.cache_directory is None  # musubi caches beside the media
    assert images.media == "images" and images.num_repeats == 3 and images.fixed_size == [512, 512]
    assert images.max_pixels_per_frame is None and images.frame_counts == (1,)
    assert cfg.train.batch_size == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_musubi_rules_that_cadence_keeps(tmp_path, caplog):
    (tmp_path / "d.toml").write_text(
        """
[[datasets]]
video_directory = "v"
target_frames = [16, 33, 30]
frame_extraction = "uniform"
frame_sample = 1
frame_stride = 5
enable_bucket = true
[[datasets]]
video_directory = "w"
frame_extraction = "full"
max_frames = 64
target_frames = [33]
bucket_no_upscale = true
"""
    )
    with caplog.at_level(logging.WARNING):
        uniform, full = load_config(_job(tmp_path, "d.toml")).datasets
    assert uniform.frame_extraction == "head" and uniform.num_frames == [13, 29, 33]
    assert uniform.frame_stride == 1  # frame_stride does nothing without slide: dropped
    assert full.frame_extraction == "full" and full.max_frames == 64 and full.frame_counts == (1,)
    assert full.fixed_size == [960, 544]  # musubi's defaults: no buckets, 960x544
    text = caplog.text
    for words in (
        "rounded down to 4k+1: [13, 29, 33]",
        "uniform with frame_sample 1 is head",
        "frame_stride = 5 does nothing with frame_extraction head",
        "full ignores target_frames",
        "bucket_no_upscale: does nothing without enable_bucket",
    ):
        assert words in text, words


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ('video_directory = "v"\ncontrol_directory = "c"', "datasets[0].control_directory", "control_path"),
        ('video_jsonl_file = "m.jsonl"', "datasets[0].video_jsonl_file", "metadata JSONL"),
        ('image_directory = "i"\nframe_stride = 2', "datasets[0].frame_stride", "video dataset key"),
        (
            'video_directory = "v"\nmultiple_target = true',
            "datasets[0].multiple_target",
            "Qwen-Image-Layered",
        ),
        ('video_directory = "v"\nfp_1f_target_index = 9', "datasets[0].fp_1f_target_index", "FramePack"),
        ('video_directory = "v"\nframe_extraction = "loop"', "datasets[0].frame_extraction", "head, chunk"),
        ('video_directory = "v"\ntarget_frames = 17', "datasets[0].target_frames", "a list of frame counts"),
        ('video_directory = "v"\ndebug_dataset = true', "datasets[0].debug_dataset", "not a musubi-tuner"),
        ('video_directory = "v"\nresolution = [32, 32]', "datasets[0].resolution", "max_pixels_per_frame"),
        ('cache_directory = "c"', "datasets[0]", "neither video_directory"),
    ],
)
def test_keys_cadence_cannot_map_are_refused_with_a_reason(tmp_path, entry, key, words):
    (tmp_path / "d.toml").write_text(f"[general]\nenable_bucket = true\n[[datasets]]\n{entry}\n")
    with pytest.raises(ConfigError) as err:
        load_config(_job(tmp_path, "d.toml"))
    issues = dict(err.value.issues)
    where = f"{tmp_path / 'd.toml'}: {key}"
    assert where in issues and words in issues[where], issues


def test_batch_sizes_must_agree(tmp_path):
    (tmp_path / "d.toml").write_text(
        '[[datasets]]\nvideo_directory = "a"\nbatch_size = 2\n[[datasets]]\nimage_directory = "b"\nbatch_size = 4\n'
    )
    with pytest.raises(ConfigError, match="different batch sizes"):
        load_config(_job(tmp_path, "d.toml"))
    (tmp_path / "e.toml").write_text('[general]\nbatch_size = 2\n[[datasets]]\nvideo_directory = "a"\n')
    with pytest.raises(ConfigError, match=r"train.batch_size: is 3 but the dataset config"):
        load_config(_job(tmp_path, "e.toml", batch_size=3))


def test_a_json_dataset_config_and_a_missing_file(tmp_path):
    (tmp_path / "d.json").write_text(
        json.dumps({"datasets": [{"video_directory": "v", "target_frames": [9]}]})
    )
    assert load_config(_job(tmp_path, "d.json")).datasets[0].num_frames == [9]
    with pytest.raises(ConfigError, match="file not found"):
        load_config(_job(tmp_path, "nope.toml"))


def test_cli_dataset_config_replaces_the_datasets(tmp_path, capsys, caplog):
    (tmp_path / "dataset.toml").write_text(MUSUBI_TOML)
    for folder in ("videos", "images"):
        (tmp_path / folder).mkdir()
    job = _job(tmp_path, [{"folder_path": str(tmp_path / "other")}])
    code = main(["validate", "--config-only", "--dataset-config", str(tmp_path / "dataset.toml"), str(job)])
    out = capsys.readouterr()
    assert code == 0, out.err
    resolved = yaml.safe_load(out.out)
    assert [ds["folder_path"] for ds in resolved["datasets"]] == [
        str(tmp_path / f) for f in ("videos",) * 2 + ("images",)
    ]
    assert "replaces the datasets of the job config" in caplog.text


def test_docs_embed_the_mapping_table_and_name_every_musubi_key():
    docs = (ROOT / "docs" / "config.md").read_text()
    assert mapping_markdown() in docs
    named = " ".join(musubi for musubi, _, _ in MAPPING)
    for key in {*GENERAL_KEYS, *VIDEO_KEYS, *IMAGE_KEYS, "cache_directory", "control_directory"}:
        assert key in named or key.startswith("fp_1f_") and "fp_1f_*" in named, key
