"""Caching windows with the real tiny Wan 2.2 I2V model: a clip's windows share one decode, a resumed fill
encodes only the missing windows, control images condition I2V, and cache_directory holds the entries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cadence.config.schema import ModelConfig
from cadence.data.cache import LatentCache
from cadence.data.controls import control_pixels
from cadence.data.dataset import build_dataset_index, load_pixels
from cadence.data.shared_decode import decode_group, decode_groups
from cadence.data.synthetic import write_clip
from cadence.models.registry import load_model_adapter


@pytest.fixture(scope="module")
def adapter(tiny_i2v: Path):
    return load_model_adapter(
        ModelConfig(name_or_path=str(tiny_i2v), arch="wan22_14b_i2v"), torch.device("cpu"), torch.float32
    )


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "a.mp4", 48, 32, 40, 16, seed=1, keyframe_interval=8)
    write_clip(folder / "b.mp4", 32, 48, 24, 16, seed=2)
    return folder


def _index(folder: Path, make_config, **ds):
    cfg = make_config(folder, resolution=[48], **ds)
    return cfg, build_dataset_index(cfg, 16, 4, 16, seed=0)


def test_windows_share_one_decode_and_get_the_same_pixels(clips, make_config):
    _, index = _index(clips, make_config, frame_extraction="slide", frame_stride=3, num_frames=[5, 9])
    items = index.train_items
    groups = decode_groups(items)
    assert len(groups) == 2 < len(items)  # one decode per clip for every window of it
    for group in groups:
        for item, pixels in decode_group(group):
            assert torch.equal(pixels, load_pixels(item)), item.frames


def test_a_long_gap_or_a_big_group_decodes_separately(clips, make_config, monkeypatch):
    import cadence.data.shared_decode as shared

    _, index = _index(clips, make_config, frame_extraction="chunk", num_frames=5)
    a = [item for item in index.train_items if item.path.name == "a.mp4"]
    monkeypatch.setattr(shared, "MAX_GAP_FRAMES", 0)  # adjacent chunks only: 0..4, 5..9 are 1 apart
    assert len(shared.decode_groups(a)) == len(a)
    monkeypatch.setattr(shared, "MAX_GAP_FRAMES", 64)
    monkeypatch.setattr(shared, "SHARED_DECODE_BYTES", a[0].width * a[0].height * 3 * 10)
    assert [len(g) for g in shared.decode_groups(a)] == [
        2,
        2,
        2,
        2,
    ]  # 8 chunks of 5, at most 10 frames per decode


def test_a_resumed_fill_encodes_only_the_windows_still_missing(clips, make_config, adapter):
    _, index = _index(clips, make_config, frame_extraction="chunk", num_frames=5)
    items = index.train_items
    assert len(items) == 8 + 4  # 40 frames: 8 chunks; 24 frames: 4 chunks
    first = LatentCache.for_adapter(adapter)
    done = []

    def interrupt(status: str) -> None:
        done.append(status)
        if len(done) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a clip's windows

    with pytest.raises(KeyboardInterrupt):
        first.ensure(items, adapter, progress=interrupt)
    assert first.encode_calls == 5
    assert not [p for p in (clips / "_cadence_cache").rglob("*") if p.name.endswith(".tmp")]
    resumed = LatentCache.for_adapter(adapter)
    report = resumed.ensure(items, adapter)
    assert (report.reused, report.encoded, resumed.encode_calls) == (5, 7, 7)
    assert all(resumed.is_valid(item) for item in items)


def _solid(path: Path, colour: tuple[int, int, int], size=(48, 32)) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(path)


def test_control_images_condition_i2v_instead_of_the_first_frame(clips, tmp_path, make_config, adapter):
    controls = tmp_path / "controls"
    controls.mkdir()
    _solid(controls / "a.png", (250, 20, 20))
    _, index = _index(clips, make_config, num_frames=5, control_path=controls)
    a = next(item for item in index.train_items if item.path.name == "a.mp4")
    b = next(item for item in index.train_items if item.path.name == "b.mp4")
    assert a.control == controls / "a.png" and b.control is None
    lines = [w for w in index.warnings if "no image in control_path" in w]
    assert len(lines) == 1 and "b.mp4" in lines[0] and "a.mp4" not in lines[0]
    cache = LatentCache.for_adapter(adapter)
    cache.ensure(index.train_items, adapter)
    with torch.no_grad():
        from_control = adapter.encode_condition(control_pixels(a)[None], a.num_frames)["condition"][0]
        from_frame = adapter.encode_condition(load_pixels(a)[None][:, :, 0], a.num_frames)["condition"][0]
        b_frame = adapter.encode_condition(load_pixels(b)[None][:, :, 0], b.num_frames)["condition"][0]
    assert torch.allclose(cache.load(a)["condition"], from_control, atol=1e-5)
    assert not torch.allclose(from_control, from_frame, atol=1e-3)
    assert torch.allclose(cache.load(b)["condition"], b_frame, atol=1e-5)

    _solid(controls / "a.png", (20, 250, 20))  # a new control image re-encodes that clip only
    os.utime(controls / "a.png", ns=(1, 10**9))
    _, changed = _index(clips, make_config, num_frames=5, control_path=controls)
    again = LatentCache.for_adapter(adapter)
    report = again.ensure(changed.train_items, adapter)
    assert (report.encoded, report.reused) == (1, 1)


def test_a_broken_control_image_skips_its_clip(clips, tmp_path, make_config):
    controls = tmp_path / "controls"
    controls.mkdir()
    (controls / "a.png").write_bytes(b"\x89PNG not really")
    _, index = _index(clips, make_config, num_frames=5, control_path=controls)
    assert [s.path.name for s in index.skipped] == ["a.mp4"]
    assert "control image" in index.skipped[0].reason
    with pytest.raises(Exception, match=r"datasets\[0\]\.control_path: .*missing does not exist"):
        _index(clips, make_config, num_frames=5, control_path=tmp_path / "missing")


def test_cache_directory_holds_the_entries(clips, tmp_path, make_config, adapter):
    shared = tmp_path / "elsewhere"
    cfg, index = _index(clips, make_config, num_frames=5, cache_directory=shared)
    cache = LatentCache.for_job(cfg, adapter, tmp_path / "run")
    report = cache.ensure(index.train_items, adapter)
    assert report.encoded == 2 and not (clips / "_cadence_cache").exists()
    (folder,) = report.folders
    assert folder.parent == shared / "wan22_14b_i2v" and folder.name.startswith("clips_")
    copy = tmp_path / "copy" / "clips"  # the same file names in another folder: their own subfolder
    shutil.copytree(clips, copy)
    cfg2, index2 = _index(copy, make_config, num_frames=5, cache_directory=shared)
    report2 = LatentCache.for_job(cfg2, adapter, tmp_path / "run").ensure(index2.train_items, adapter)
    assert report2.encoded == 2 and report2.folders.isdisjoint(report.folders)
