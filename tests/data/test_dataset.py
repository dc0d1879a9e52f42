import logging

import numpy as np
import pytest
import torch

from cadence.data.dataset import build_dataset_index, load_pixels
from cadence.data.media import DatasetError
from cadence.data.synthetic import render_frame, write_clip
from cadence.data.video import decode_video_frames, probe_video


def test_index_synthetic_dataset(dataset_dir, make_config):
    cfg = make_config(dataset_dir, resolution=[64, 80])
    index = build_dataset_index(cfg, 16, 4, 16, seed=0)
    assert index.skipped == [] and index.eval_items == []
    names = {it.path.name for it in index.train_items}
    assert len(names) == 9
    clip = [it for it in index.train_items if it.path.name == "clip_00.mp4"]
    assert {it.bucket for it in clip} == {(64, 48, 17), (96, 64, 17)}  # one item per resolution
    portrait = [it for it in index.train_items if it.path.name == "clip_02.mp4"]
    assert all(it.height > it.width for it in portrait)
    image = next(it for it in index.train_items if it.path.name == "image_00.png")
    assert image.frames == (0,) and image.kind == "image"
    assert clip[0].caption.startswith("sks ") and "[trigger]" not in clip[0].caption
    again = build_dataset_index(cfg, 16, 4, 16, seed=0)
    assert again.train_items == index.train_items  # deterministic frame plans


def test_load_pixels_shapes_and_range(dataset_dir, make_config):
    index = build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0)
    for item in index.train_items[:2] + index.train_items[-1:]:
        pixels = load_pixels(item)
        assert pixels.shape == (3, item.num_frames, item.height, item.width)
        assert pixels.dtype == torch.float32 and pixels.min() >= -1 and pixels.max() <= 1


def test_seeking_decode_returns_the_wanted_frames(tmp_path):
    """Frames decoded after a seek must be the rendered frames with those indices, not their neighbours."""
    path = write_clip(tmp_path / "gop.mp4", 96, 64, 48, 16, seed=1, keyframe_interval=8)
    wanted = (21, 25, 29, 33, 37)
    frames = decode_video_frames(path, wanted, 96, 64, 16.0)
    for got, index in zip(frames, wanted, strict=True):
        errors = {
            t: np.abs(got.astype(int) - render_frame(t, 96, 64, 1)).mean()
            for t in range(index - 2, index + 3)
        }
        assert min(errors, key=errors.get) == index, errors
        assert errors[index] < 8


def test_bad_files_are_skipped_with_reasons(dataset_dir, caplog, make_config):
    (dataset_dir / "corrupt.mp4").write_bytes(b"not a video" * 50)
    (dataset_dir / "empty.mov").write_bytes(b"")
    (dataset_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    write_clip(dataset_dir / "short.mp4", 96, 64, 3, 16, seed=2)
    (dataset_dir / "notes.pdf").write_bytes(b"%PDF")
    (dataset_dir / "model.ckpt").write_bytes(b"x")
    (dataset_dir / ".hidden.mp4").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        index = build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0)
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert set(reasons) == {"corrupt.mp4", "empty.mov", "broken.png", "short.mp4"}
    assert "empty" in reasons["empty.mov"] and "too short" in reasons["short.mp4"]
    assert all("remove it" in r or "longer clip" in r for r in reasons.values())
    assert len(index.train_items) == 9
    unsupported = [w for w in index.warnings if "unsupported" in w]
    assert len(unsupported) == 1 and ".pdf x1" in unsupported[0] and ".ckpt x1" in unsupported[0]


def test_unreadable_file_is_skipped(dataset_dir, make_config):
    (dataset_dir / "gone.mp4").symlink_to(dataset_dir / "moved_away.mp4")  # dangling link: cannot be read
    index = build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0)
    assert [s.path.name for s in index.skipped] == ["gone.mp4"]
    assert "cannot be read" in index.skipped[0].reason and "remove it" in index.skipped[0].reason


def test_missing_captions_give_one_counted_warning(dataset_dir, make_config):
    for name in ("clip_00.txt", "clip_01.txt", "image_01.txt"):
        (dataset_dir / name).unlink()
    index = build_dataset_index(make_config(dataset_dir, default_caption="a clip"), 16, 4, 16, seed=0)
    lines = [w for w in index.warnings if "caption" in w and "have no" in w]
    assert len(lines) == 1 and "3 of 9" in lines[0] and str(dataset_dir) in lines[0]
    assert {it.caption for it in index.train_items if it.path.stem in {"clip_00", "image_01"}} == {
        "sks a clip"
    }


def test_short_video_uses_fewer_frames_with_one_warning(dataset_dir, make_config):
    write_clip(dataset_dir / "short.mp4", 96, 64, 12, 16, seed=3)
    index = build_dataset_index(make_config(dataset_dir, num_frames=33), 16, 4, 16, seed=0)
    short = next(it for it in index.train_items if it.path.name == "short.mp4")
    assert short.num_frames == 9 and short.bucket == (64, 48, 9)
    lines = [w for w in index.warnings if "shorter than num_frames" in w]
    assert len(lines) == 1 and "short.mp4 (9)" in lines[0]


def test_motion_too_fast_warning_names_file_and_rates(tmp_path, make_config):
    folder = tmp_path / "long"
    folder.mkdir()
    write_clip(folder / "long.mp4", 96, 64, 90, 16, seed=4)
    cfg = make_config(folder, num_frames=17, shrink_video_to_frames=True)
    index = build_dataset_index(cfg, 16, 4, 16, seed=0)
    lines = [w for w in index.warnings if "too fast" in w]
    assert len(lines) == 1 and "long.mp4 (2.9 fps)" in lines[0] and "16 fps" in lines[0]
    calm = build_dataset_index(make_config(folder, num_frames=17, shrink_video_to_frames=False), 16, 4, 16, 0)
    assert not [w for w in calm.warnings if "too fast" in w]


def test_missing_and_empty_folders_raise(tmp_path, make_config):
    with pytest.raises(DatasetError, match=r"datasets\[0\]\.folder_path: .*nope does not exist"):
        build_dataset_index(make_config(tmp_path / "nope"), 16, 4, 16, 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "bad.mp4").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no usable media .*bad.mp4"):
        build_dataset_index(make_config(tmp_path / "empty"), 16, 4, 16, 0)


def test_probe_reads_metadata(synthetic_master):
    info = probe_video(synthetic_master / "clip_02.mp4")
    assert (info.width, info.height, info.num_frames, info.fps) == (64, 96, 33, 16.0)


def test_bucket_resize_matches_a_reference_resize(tmp_path):
    """Cover-resize + center-crop through swscale agrees with PIL on the same (rendered) frame."""
    from PIL import Image, ImageOps

    path = write_clip(tmp_path / "wide.mp4", 160, 96, 9, 16, seed=5)
    frames = decode_video_frames(path, (0, 4, 8), 64, 48, 16.0)
    for got, t in zip(frames, (0, 4, 8), strict=True):
        reference = ImageOps.fit(Image.fromarray(render_frame(t, 160, 96, 5)), (64, 48), Image.Resampling.BOX)
        assert np.abs(got.astype(int) - np.asarray(reference, dtype=int)).mean() < 10
