import fractions
import logging
import os
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cadence.data.dataset import build_dataset_index, load_pixels
from cadence.data.media import DatasetError, MediaError
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
    files = len({item.path for item in index.items})
    assert index.summary() == (
        f"dataset: 9 training items from {files} files (6 shrink windows, 3 images); 4 files skipped (their "
        "reasons are in the warnings "
        "at the start of the log)"
    )
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


def _write_audio_only(path: Path) -> None:
    """An mp4 holding one second of silent AAC and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        for start in range(0, 48000, 1024):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, fractions.Fraction(1, 48000)
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _finishes(call, fifos: list[Path], seconds: float = 30.0):
    """call()'s result, or a test failure (not a hung run) when it is still blocked after `seconds`, e.g.
    reading a FIFO; the FIFOs are then opened for writing and closed, which releases the blocked reader."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # nobody is reading this one
        thread.join(10)
        pytest.fail(f"still blocked after {seconds:g} s (reading a FIFO?)")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _swap(path: Path, kind: str) -> None:
    """Replace `path` after indexing, as a user (or a sync tool) might."""
    if kind == "audio_only":
        _write_audio_only(path)
    elif kind == "deleted":
        path.unlink()
    elif kind == "png":
        Image.fromarray(np.full((64, 96, 3), 50, np.uint8)).save(path, format="PNG")
    elif kind == "text":
        path.write_text("this is not a video\n")
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "video":
        os.replace(write_clip(path.with_name("swap.mp4"), 96, 64, 9, 16, seed=6), path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("clip_00.mp4", "audio_only", "has no video stream"),
        ("clip_00.mp4", "deleted", "does not exist"),
        ("clip_00.mp4", "png", "PNG image with a video extension"),
        ("clip_00.mp4", "text", "not a readable video"),
        ("clip_00.mp4", "fifo", "not a regular file"),
        ("image_00.png", "deleted", "does not exist"),
        ("image_00.png", "video", "not a readable image"),
        ("image_00.png", "truncated", "failed to decode"),
        ("image_00.png", "fifo", "not a regular file"),
    ],
)
def test_file_swapped_after_indexing_is_a_skippable_media_error(
    dataset_dir, make_config, name, kind, expected
):
    """Between indexing and caching a file is replaced or removed: decoding raises MediaError (the cache skips
    and counts it) naming the file and the problem, instead of crashing or hanging the run."""
    index = build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0)
    item = next(it for it in index.train_items if it.path.name == name)
    _swap(item.path, kind)
    with pytest.raises(MediaError, match=expected) as caught:
        _finishes(lambda: load_pixels(item), [item.path])
    assert name in str(caught.value)
    if kind == "deleted":
        assert "restore it or remove it" in caught.value.advice and "re-encode" not in caught.value.advice


def test_fifos_and_images_named_as_video_are_skipped_with_the_right_reason(dataset_dir, make_config):
    """A FIFO named like a caption must not hang indexing; FIFOs named like media and a PNG renamed .mp4 are
    skipped for what they are, not as empty or too-short files."""
    os.mkfifo(dataset_dir / "fifo.mp4")
    os.mkfifo(dataset_dir / "fifo.png")
    (dataset_dir / "clip_00.txt").unlink()
    os.mkfifo(dataset_dir / "clip_00.txt")  # the caption of a good clip
    Image.fromarray(np.full((64, 64, 3), 50, np.uint8)).save(dataset_dir / "still.mp4", format="PNG")
    fifos = [dataset_dir / name for name in ("fifo.mp4", "fifo.png", "clip_00.txt")]
    index = _finishes(lambda: build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0), fifos)
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert set(reasons) == {"fifo.mp4", "fifo.png", "still.mp4"}
    assert "not a regular file" in reasons["fifo.mp4"] and "not a regular file" in reasons["fifo.png"]
    assert "PNG image with a video extension" in reasons["still.mp4"] and "rename" in reasons["still.mp4"]
    unreadable = [w for w in index.warnings if "could not be read" in w]
    assert len(unreadable) == 1 and "clip_00.txt (not a regular file)" in unreadable[0]
    clip = next(it for it in index.train_items if it.path.name == "clip_00.mp4")
    assert clip.caption == "sks"  # the (empty) default caption with the trigger word


def test_orphan_captions_give_one_counted_warning(dataset_dir, make_config):
    """Caption files that no media file reads (a typo, a deleted clip) are named in one line, not ignored."""
    names = ["clip_99.txt", "image_00.mp4.txt", "old_a.txt", "old_b.txt", "old_c.txt", "old_d.txt"]
    for name in names:
        (dataset_dir / name).write_text("a caption without its media")
    index = build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0)
    lines = [w for w in index.warnings if "match no image or video" in w]
    assert len(lines) == 1 and lines[0].startswith(f"6 .txt files in {dataset_dir}")
    assert "clip_99.txt" in lines[0] and "and 1 more" in lines[0] and "clip_00.txt" not in lines[0]
    for name in names:
        (dataset_dir / name).unlink()
    clean = build_dataset_index(make_config(dataset_dir), 16, 4, 16, seed=0)
    assert not [w for w in clean.warnings if "match no image or video" in w]
