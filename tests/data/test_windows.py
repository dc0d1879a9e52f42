"""Frame-extraction windows on real mp4 files: each mode's windows, decoded through the dataset pipeline,
are the frames a player shows at the planned times (checked against every frame decoded by PyAV with its
timestamp), on a constant-rate and a variable-rate clip."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from cadence.config.schema import DatasetConfig
from cadence.data.dataset import build_dataset_index
from cadence.data.frames import plan_frames
from cadence.data.shared_decode import decode_group, decode_groups
from cadence.data.synthetic import render_frame
from cadence.data.video import probe_video
from cadence.data.windows import WindowSpec, plan_windows

TB = fractions.Fraction(1, 90000)


def _write_numbered(path: Path, ticks: list[int]) -> None:
    """Frame k shown after sum(ticks[:k]) / 90000 s, carrying its number k in two corner patches."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = TB
        pts, frames = 0, []
        for k, tick in enumerate(ticks):
            pixels = render_frame(k, 64, 48, 3)
            pixels[:16, :16] = 4 * (k % 64)  # gray patches survive yuv420p: k = low + 64 * high
            pixels[:16, 16:32] = 4 * (k // 64)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = pts, TB
            frames.append(frame)
            pts += tick
        for frame in [*frames, None]:
            for packet in stream.encode(frame):
                container.mux(packet)


def _numbers(pixels: np.ndarray) -> list[int]:
    """Frame numbers from the corner patches of uint8 [F, H, W, 3] (or [-1, 1] float [3, F, H, W])."""
    if pixels.dtype != np.uint8:
        pixels = ((np.asarray(pixels).transpose(1, 2, 3, 0) + 1) * 127.5).round()
    return [
        round(float(f[2:12, 2:12].mean()) / 4) + 64 * round(float(f[2:12, 18:30].mean()) / 4) for f in pixels
    ]


def _reference(path: Path) -> list[tuple[float, int]]:
    """(seconds from the stream start, frame number) of every frame, decoded by PyAV in presentation order."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for frame in container.decode(stream):
            out.append(
                (
                    float((frame.pts - start) * stream.time_base),
                    _numbers(frame.to_ndarray(format="rgb24")[None])[0],
                )
            )
    return sorted(out)


def _shown_at(reference: list[tuple[float, int]], seconds: float) -> int:
    return min(reference, key=lambda entry: abs(entry[0] - seconds))[1]


CFR = [3000] * 96  # 96 frames at 30 fps: 3.2 s
VFR = [int(3000 * (1 + d)) for d in np.random.default_rng(1).uniform(-0.25, 0.25, 96)]  # phone-like jitter
MODES = [
    ("head", {}),
    ("chunk", {}),
    ("slide", {"frame_stride": 6}),
    ("uniform", {"frame_sample": 3}),
    ("full", {"max_frames": 33}),
    ("random", {}),
]


@pytest.mark.parametrize("ticks", [CFR, VFR], ids=["constant_rate", "variable_rate"])
@pytest.mark.parametrize(("mode", "keys"), MODES, ids=[m for m, _ in MODES])
def test_each_mode_takes_the_frames_shown_at_the_planned_times(tmp_path, make_config, ticks, mode, keys):
    folder = tmp_path / "clips"
    folder.mkdir()
    clip = folder / "numbered.mp4"
    _write_numbered(clip, ticks)
    lengths = {"num_frames": 1} if mode == "full" else {"num_frames": [9, 17]}
    cfg = make_config(folder, resolution=[64], frame_extraction=mode, fps=16, **lengths, **keys)
    index = build_dataset_index(cfg, 16, 4, 16, seed=0)
    items = index.train_items
    info = probe_video(clip)
    reference = _reference(clip)
    step = info.fps / 16  # source frames per frame at 16 fps
    positions = int((info.num_frames - 1) / step + 1e-9) + 1
    starts = sorted({round(item.frames[0] / step) for item in items if item.num_frames == 9})
    expected_starts = {
        "head": [0],
        "chunk": list(range(0, positions - 9 + 1, 9)),
        "slide": list(range(0, positions - 9 + 1, 6)),
        "uniform": [int(s) for s in np.linspace(0, positions - 9, 3)],
    }
    if mode in expected_starts:
        assert starts == expected_starts[mode], (starts, positions)
        assert {item.num_frames for item in items} == {9, 17}
    if mode == "full":
        assert [item.num_frames for item in items] == [33]  # 51 frames at 16 fps, cut to max_frames
    decoded = {id(item): pixels for group in decode_groups(items) for item, pixels in decode_group(group)}
    for item in items:
        got = _numbers(decoded[id(item)].numpy())
        # index i is the frame shown at i / fps (the clip's timeline), and the planned times step 1/16 s
        assert got == [_shown_at(reference, i / info.fps) for i in item.frames], (mode, item.frames)
        # the window's start in seconds: on the 16 fps grid, or (random) at a random source frame
        start = item.frames[0] / info.fps if mode == "random" else round(item.frames[0] / step) / 16
        for k, index_k in enumerate(item.frames):
            assert abs(index_k / info.fps - (start + k / 16)) <= 0.5 / info.fps + 1e-6
    summary = index.summary()
    assert f"({len(items)} {mode} window" in summary, summary


def test_windows_of_one_clip_are_items_with_their_own_cache_entries(tmp_path, make_config):
    from cadence.data.cache import LatentCache

    folder = tmp_path / "clips"
    folder.mkdir()
    _write_numbered(folder / "a.mp4", CFR)
    index = build_dataset_index(
        make_config(folder, resolution=[64], frame_extraction="chunk", num_frames=[9, 17]), 16, 4, 16, 0
    )
    cache = LatentCache("m", "wan22_14b_i2v", True)
    paths = {cache.path(item) for item in index.train_items}
    assert len(paths) == len(index.train_items) == 5 + 3  # 51 frames at 16 fps: 5 chunks of 9, 3 of 17
    prints = {cache.fingerprint(item)["frames"] for item in index.train_items}
    assert len(prints) == len(index.train_items)
    assert {item.bucket[2] for item in index.train_items} == {9, 17}  # each length is its own bucket


def test_fps_source_counts_source_frames_like_musubi(tmp_path, make_config):
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_numbered(folder / "a.mp4", CFR)
    items = build_dataset_index(
        make_config(folder, resolution=[64], frame_extraction="chunk", num_frames=17, fps="source"),
        16,
        4,
        16,
        0,
    ).train_items
    assert [item.frames for item in items] == [tuple(range(s, s + 17)) for s in (0, 17, 34, 51, 68)]


def test_shrink_and_random_keep_the_frames_of_older_configs():
    """Configs written before windows existed plan exactly as before, so their cache entries stay valid."""
    for shrink, mode in ((True, "shrink"), (False, "random")):
        for total, fps, count in ((200, 30.0, 33), (23, 16.0, 33), (90, 16.0, 17), (50, 24.0, 1)):
            old = plan_frames(total, fps, count, shrink=shrink, target_fps=16, seed=5, key="c.mp4")
            new = plan_windows(total, fps, WindowSpec(mode, (count,), 16.0), seed=5, key="c.mp4")
            assert [w.indices for w in new.windows] == [old.indices]
            assert new.shortened == old.shortened


def test_plans_that_do_not_fit_are_reported():
    spec = WindowSpec("chunk", (17, 81), 16.0)
    plan = plan_windows(60, 16.0, spec, seed=0, key="k")
    assert plan.missing == (81,) and len(plan.windows) == 3
    full = plan_windows(300, 16.0, WindowSpec("full", (1,), 16.0, max_frames=40), seed=0, key="k")
    assert full.cut and [len(w.indices) for w in full.windows] == [37]
    slow = plan_windows(40, 8.0, WindowSpec("head", (17,), 16.0), seed=0, key="k")  # 8 fps: never duplicated
    assert slow.windows[0].indices == tuple(range(17))
    from cadence.data.frames import TooShortError

    with pytest.raises(TooShortError, match="shortest window"):
        plan_windows(10, 16.0, WindowSpec("slide", (17,), 16.0), seed=0, key="k")


def test_video_windows_are_summarized_and_warned(tmp_path, make_config):
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_numbered(folder / "long.mp4", CFR)
    _write_numbered(folder / "short.mp4", [3000] * 20)
    index = build_dataset_index(
        make_config(folder, resolution=[64], frame_extraction="head", num_frames=[9, 33]), 16, 4, 16, 0
    )
    assert "(3 head windows)" in index.summary()
    lines = [w for w in index.warnings if "too short for some num_frames" in w]
    assert len(lines) == 1 and "short.mp4 (33)" in lines[0]
    cut = build_dataset_index(
        make_config(folder, resolution=[64], frame_extraction="full", max_frames=17, num_frames=1),
        16,
        4,
        16,
        0,
    )
    lines = [w for w in cut.warnings if "longer than max_frames=17" in w]
    assert len(lines) == 1 and "long.mp4" in lines[0] and "short.mp4" not in lines[0]


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        (
            {"frame_extraction": "chunk", "frame_stride": 4},
            "frame_stride: 4 is used by frame_extraction: slide",
        ),
        ({"frame_extraction": "head", "max_frames": 65}, "max_frames: 65 is used by frame_extraction: full"),
        ({"frame_extraction": "full", "num_frames": [17]}, "does nothing with frame_extraction: full"),
        (
            {"frame_extraction": "chunk", "shrink_video_to_frames": True},
            "contradicts frame_extraction: chunk",
        ),
        ({"num_frames": [17, 30]}, "try 29 or 33"),
        ({"num_frames": []}, "empty list"),
        ({"fps": 0}, "fps must be > 0"),
        ({"fixed_size": [64, 64], "max_pixels_per_frame": 8192}, "fixed_size sets every file's size"),
        ({"media": "images", "num_frames": 17}, "media: images uses no video frames"),
        ({"control_path": "ctrl", "do_i2v": False}, "does not train I2V"),
    ],
)
def test_dataset_keys_that_cannot_act_are_refused(keys, words):
    with pytest.raises(ValidationError, match=words):
        DatasetConfig(folder_path="x", **keys)


def test_frame_extraction_and_shrink_resolve_to_one_choice():
    assert DatasetConfig(folder_path="x").frame_extraction == "shrink"
    seed_style = DatasetConfig(folder_path="x", shrink_video_to_frames=False)
    assert seed_style.frame_extraction == "random"
    chunk = DatasetConfig(folder_path="x", frame_extraction="chunk", num_frames=[33, 17, 33])
    assert chunk.shrink_video_to_frames is False and chunk.num_frames == [17, 33]
    again = DatasetConfig.model_validate(chunk.model_dump())  # the resolved config loads back unchanged
    assert again == chunk


def test_the_seed_s_control_path_list_is_refused_with_a_reason():
    from cadence.config.errors import ConfigError
    from cadence.config.loader import load_config_dict

    job = {
        "name": "t",
        "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
        "datasets": [{"folder_path": "/x", "control_path": ["/a", "/b"]}],
        "train": {"disable_sampling": True},
    }
    with pytest.raises(ConfigError) as err:
        load_config_dict(job)
    assert "one first-frame image per clip" in dict(err.value.issues)["datasets[0].control_path"]


def test_control_path_on_a_text_to_video_model_is_refused():
    from cadence.config.errors import ConfigError
    from cadence.config.loader import load_config_dict

    job = {
        "name": "t",
        "model": {"name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "arch": "wan21"},
        "datasets": [{"folder_path": "/x", "control_path": "/c"}],
        "train": {"disable_sampling": True},
    }
    with pytest.raises(ConfigError, match="does not train I2V"):
        load_config_dict(job)
