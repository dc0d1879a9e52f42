"""The training clips' motion reference: measured on the planned frames at caching time, kept with the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadence.config.schema import JobConfig
from cadence.data.cache import LatentCache
from cadence.data.dataset import build_dataset_index
from cadence.data.motion_reference import REFERENCE_FILE, ensure_motion_reference, read_motion_reference
from cadence.data.synthetic import render_frame, write_clip
from cadence.sampling.writers import write_mp4


def _config(folder: Path, **dataset: object) -> JobConfig:
    ds = {
        "folder_path": folder,
        "resolution": [64],
        "num_frames": 9,
        "cache_latents_to_disk": True,
        "shrink_video_to_frames": False,  # frames at the dataset fps (16, the model's): real time
        **dataset,
    }
    return JobConfig(
        name="run",
        training_folder=folder.parent / "output",
        model={"name_or_path": "tiny", "arch": "wan22_14b_i2v"},
        datasets=[ds],
    )


def _dataset(folder: Path) -> Path:
    folder.mkdir()
    for i in range(2):
        write_clip(folder / f"moving_{i}.mp4", 96, 64, 17, 16, seed=i)
    still = np.repeat(render_frame(0, 96, 64, seed=5)[None], 17, axis=0)
    write_mp4(folder / "still.mp4", still, 16)
    Image.fromarray(render_frame(3, 96, 64, seed=7)).save(folder / "image.png")
    return folder


def _reference(cfg: JobConfig):
    index = build_dataset_index(cfg, 16, 4, 16)
    latents = LatentCache("tiny", "wan22_14b_i2v", True, run_folder=Path(cfg.run_dir))
    return ensure_motion_reference(Path(cfg.run_dir), index.items, latents, 16), index, latents


def test_reference_is_the_mean_over_training_clips_and_is_reused(tmp_path: Path) -> None:
    cfg = _config(_dataset(tmp_path / "clips"))
    reference, index, latents = _reference(cfg)
    assert (
        reference is not None and reference.clips == 3 and reference.skipped == 0
    )  # the image has no motion
    entries = {
        it.path.name: latents.path(it).with_suffix(".motion.json") for it in index.items if it.kind == "video"
    }
    assert all(
        p.parent.name == "wan22_14b_i2v" and p.parent.parent.name == "_cadence_cache"
        for p in entries.values()
    )
    clips = {name: json.loads(p.read_text())["stats"] for name, p in entries.items()}
    assert (
        clips["still.mp4"]["coarse"]
        < 0.005
        < min(clips["moving_0.mp4"]["coarse"], clips["moving_1.mp4"]["coarse"])
    )
    mean = sum(c["coarse"] for c in clips.values()) / 3
    assert reference.stats.coarse == pytest.approx(mean)
    on_disk = read_motion_reference(cfg.run_dir)
    assert on_disk is not None and on_disk.stats == reference.stats and on_disk.fps == 16
    assert on_disk.speedup == pytest.approx(1.0)  # dataset fps = native fps: real time

    stamps = {name: p.stat().st_mtime_ns for name, p in entries.items()}
    again, _, _ = _reference(cfg)
    assert again is not None and again.stats == reference.stats
    assert {name: p.stat().st_mtime_ns for name, p in entries.items()} == stamps  # reused, not re-measured

    # a clip replaced by a still one is measured again: its fingerprint (size, mtime) changed
    still = np.repeat(render_frame(0, 96, 64, seed=1)[None], 17, axis=0)
    write_mp4(tmp_path / "clips" / "moving_1.mp4", still, 16)
    changed, _, _ = _reference(cfg)
    assert changed is not None and changed.stats.coarse < reference.stats.coarse
    assert json.loads(entries["moving_1.mp4"].read_text())["stats"]["coarse"] < 0.005


def test_squeezed_clips_count_as_the_fast_clips_the_model_sees(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    frames = []
    for t in range(65):  # a square drifting 0.5 px per frame: 4 px per planned frame once squeezed
        frame = np.full((64, 96, 3), 60, dtype=np.uint8)
        x = 20 + t // 2
        frame[22:42, x : x + 20] = ((np.add.outer(np.arange(20), np.arange(20)) // 4) % 2 * 150 + 80)[
            ..., None
        ]
        frames.append(frame)
    write_mp4(folder / "long.mp4", np.stack(frames), 16)
    real_time, _, _ = _reference(_config(folder))
    (tmp_path / "output").rename(tmp_path / "output_real_time")
    squeezed, _, _ = _reference(_config(folder, shrink_video_to_frames=True))
    assert real_time is not None and squeezed is not None
    assert squeezed.speedup == pytest.approx(8.0)  # 65 frames shown as 9
    assert squeezed.stats.coarse > 2 * real_time.stats.coarse


def test_no_video_means_no_reference(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(render_frame(i, 96, 64, seed=i)).save(folder / f"img_{i}.png")
    cfg = _config(folder, num_frames=1)
    (Path(cfg.run_dir)).mkdir(parents=True)
    (Path(cfg.run_dir) / REFERENCE_FILE).write_text("{}")  # a stale one from another dataset
    reference, _, _ = _reference(cfg)
    assert reference is None and not (Path(cfg.run_dir) / REFERENCE_FILE).exists()
    assert read_motion_reference(cfg.run_dir) is None
