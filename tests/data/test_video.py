"""Video probing and decoding on real encoded files with container quirks (PyAV writes them here)."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from cadence.data.frames import plan_frames
from cadence.data.media import MediaError
from cadence.data.synthetic import render_frame, write_clip
from cadence.data.video import decode_video_frames, probe_video


def _mux(container, stream, frames) -> None:
    """Encode `frames` (av frames) on `stream`, flush the encoder, and mux every packet."""
    for frame in [*frames, None]:
        for packet in stream.encode(frame):
            container.mux(packet)


def _write(path: Path, frames: int, audio_seconds: float = 0.0, size=(96, 64)) -> Path:
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=16)
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        audio = (
            container.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000)
            if audio_seconds
            else None
        )
        _mux(
            container,
            video,
            (av.VideoFrame.from_ndarray(render_frame(t, *size, 1), format="rgb24") for t in range(frames)),
        )
        if audio is not None:
            chunks = []
            for start in range(0, int(48000 * audio_seconds), 960):
                chunk = av.AudioFrame.from_ndarray(
                    np.zeros((1, 960), dtype=np.float32), format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, fractions.Fraction(1, 48000)
                chunks.append(chunk)
            _mux(container, audio, chunks)
    return path


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_matroska_with_longer_audio_counts_video_frames(tmp_path, suffix):
    """The container duration covers the 3.5 s of audio; the video has 33 frames (2.06 s)."""
    path = _write(tmp_path / f"clip{suffix}", 33, audio_seconds=3.5)
    info = probe_video(path)
    assert info.num_frames == 33 and info.duration == pytest.approx(33 / 16, abs=0.07)
    plan = plan_frames(info.num_frames, info.fps, 17, shrink=True, target_fps=16, seed=0, key="a")
    assert decode_video_frames(path, plan.indices, 64, 48, info.fps).shape == (17, 48, 64, 3)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path, degrees):
    """A phone clip: frames stored turned, with a display matrix that turns them back. Cadence sees the clip
    as shown (portrait size, upright pixels)."""
    upright = [render_frame(t, 48, 64, 2) for t in range(9)]  # [64, 48, 3]: portrait
    turns = degrees // 90
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16, options={"crf": "12"})
        stored = [np.ascontiguousarray(np.rot90(f, k=-turns)) for f in upright]
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        _mux(container, stream, (av.VideoFrame.from_ndarray(frame, format="rgb24") for frame in stored))
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (48, 64, degrees % 360)
    frames = decode_video_frames(path, tuple(range(9)), 48, 64, info.fps)
    error = np.abs(frames.astype(float) - np.stack(upright).astype(float)).mean()
    flipped = np.abs(frames.astype(float) - np.stack(upright)[:, ::-1, ::-1].astype(float)).mean()
    assert error < 6 < flipped, (error, flipped)


def _write_vfr(path: Path, ticks: list[int], rate: int = 30) -> list[float]:
    """A clip whose frame k is shown after sum(ticks[:k]) / 90000 s; returns those times. Frame k carries its
    number in a corner patch (4 * k, read back from the decoded pixels). `rate` is the rate the container
    declares (Matroska keeps it as its frame rate)."""
    times, pts = [], 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 90000)
        frames = []
        for k, tick in enumerate(ticks):
            pixels = render_frame(k, 96, 64, 1)
            pixels[:16, :16] = 4 * k
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = pts, fractions.Fraction(1, 90000)
            frames.append(frame)
            times.append(pts / 90000)
            pts += tick
        _mux(container, stream, frames)
    return times


@pytest.mark.parametrize("kind", ["stall", "jitter"])
def test_variable_frame_rate_takes_the_frame_shown_at_each_time(tmp_path, kind):
    if kind == "stall":  # a 100 ms hiccup in the middle of a 30 fps clip
        ticks = [3000] * 61
        ticks[30] = 9000
    else:  # phone-like timestamps: 30 fps +/- 25 %
        ticks = [int(3000 * (1 + d)) for d in np.random.default_rng(0).uniform(-0.25, 0.25, 61)]
    path = tmp_path / f"{kind}.mp4"
    times = _write_vfr(path, ticks)
    info = probe_video(path)
    for seed in range(3):
        plan = plan_frames(info.num_frames, info.fps, 17, shrink=False, target_fps=16, seed=seed, key=kind)
        frames = decode_video_frames(path, plan.indices, 96, 64, info.fps)
        got = [round(float(f[2:14, 2:14, 0].mean()) / 4) for f in frames]
        start = times[0]
        nearest = [
            min(range(len(times)), key=lambda k, t=i / info.fps: abs(times[k] - start - t))
            for i in plan.indices
        ]
        assert got == nearest, (seed, plan.indices)


def test_a_held_last_frame_covers_the_end_of_the_clip(tmp_path):
    """Screen recordings hold their last frame: indices up to the clip's end take it instead of failing."""
    path = tmp_path / "held.mp4"
    tb = fractions.Fraction(1, 90000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = tb
        packets = []
        for k in range(31):
            pixels = np.full((64, 96, 3), 128, np.uint8)
            pixels[:16, :16] = 4 * k
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = 3000 * k, tb
            packets += list(stream.encode(frame))
        packets += list(stream.encode())
        for packet in packets:
            packet.duration = 90000 if packet.pts == 3000 * 30 else 3000  # the last frame stays for 1 s
            container.mux(packet)
    info = probe_video(path)
    last = decode_video_frames(path, (info.num_frames - 1,), 96, 64, info.fps)
    assert round(float(last[0, 2:14, 2:14, 0].mean()) / 4) == 30


def _patch_numbers(frames: np.ndarray) -> list[int]:
    """The frame numbers `_write_vfr` put in the corner patches."""
    return [round(float(f[2:14, 2:14, 0].mean()) / 4) for f in frames]


@pytest.mark.parametrize(
    ("kind", "ticks", "rate"),
    [
        ("slow_tail", [3000] * 30 + [90000] * 10, 30),  # 30 frames at 30 fps, then 10 frames 1 s apart
        ("concat", [9000] * 20 + [6750] * 40, 10),  # 2 s at 10 fps joined to 3 s at 13.3 fps
    ],
)
def test_variable_rate_matroska_plan_spans_the_whole_clip(tmp_path, kind, ticks, rate):
    """Matroska declares the rate of the first frames; the frame count comes from the packets. Index i must
    still mean time i / fps over the real clip: the plan reaches the last frame and never runs past it."""
    path = tmp_path / f"{kind}.mkv"
    times = _write_vfr(path, ticks, rate)
    info = probe_video(path)
    assert info.num_frames == len(ticks)
    assert info.duration == pytest.approx(times[-1], rel=0.05)  # the last frame starts near the end
    plan = plan_frames(info.num_frames, info.fps, 17, shrink=True, target_fps=16, seed=0, key=kind)
    got = _patch_numbers(decode_video_frames(path, plan.indices, 96, 64, info.fps))
    nearest = [min(range(len(times)), key=lambda k, t=i / info.fps: abs(times[k] - t)) for i in plan.indices]
    assert got == nearest
    assert got[0] == 0 and got[-1] == len(ticks) - 1, got  # the plan covers the clip end to end
    assert info.num_frames / info.fps == pytest.approx(info.duration, rel=0.05)


def _write_trimmed(path: Path, hidden: int, total: int = 100) -> None:
    """What `ffmpeg -ss T -i long.mp4 -c copy cut.mp4` writes: every packet from the keyframe before T, shifted
    so the first `hidden` frames have negative times, which the mp4 muxer turns into an edit list hiding them.
    The header still counts all `total` frames. Frame k shows k in two corner patches (tens, units)."""
    tb = fractions.Fraction(1, 25)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "50", "bf": "2", "crf": "4"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = tb
        packets = []
        for k in range(total):
            pixels = np.full((64, 96, 3), 128, np.uint8)
            pixels[:16, :16], pixels[:16, 16:32] = 25 * (k // 10), 25 * (k % 10)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = k, tb
            packets += list(stream.encode(frame))
        packets += list(stream.encode())
        for packet in packets:
            packet.pts, packet.dts = packet.pts - hidden, packet.dts - hidden
            container.mux(packet)


def _numbers(frames) -> list[int]:
    """Frame numbers `_write_trimmed` put in the patches of RGB frames."""
    return [
        10 * round(float(f[2:14, 2:14, 0].mean()) / 25) + round(float(f[2:14, 18:30, 0].mean()) / 25)
        for f in frames
    ]


def test_trimmed_mp4_with_an_edit_list_counts_only_the_shown_frames(tmp_path):
    """A stream-copy cut keeps 100 packets but shows 67: the frame count must be the shown one, index 0 the
    first shown frame, and every index the frame an independent full decode shows at that position."""
    path = tmp_path / "cut.mp4"
    _write_trimmed(path, hidden=33)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 100  # the header's count includes the hidden frames
        shown = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert _numbers(shown) == list(range(33, 100))
    info = probe_video(path)
    assert info.num_frames == len(shown) == 67 and info.duration == pytest.approx(67 / 25)
    plan = plan_frames(info.num_frames, info.fps, 17, shrink=True, target_fps=16, seed=0, key="cut")
    frames = decode_video_frames(path, plan.indices, 96, 64, info.fps)
    assert _numbers(frames) == [33 + i for i in plan.indices]
    for index in (0, 20, 50, 66):  # each alone: the seek lands on the shown frame, not a hidden one
        single = decode_video_frames(path, (index,), 96, 64, info.fps)[0]
        assert np.abs(single.astype(int) - shown[index].astype(int)).mean() < 1


def test_a_clip_with_latin1_metadata_is_read(tmp_path):
    """Old cameras and tools write tags in Latin-1; PyAV's strict UTF-8 decoding of them must not turn a good
    clip into a crash (UnicodeDecodeError escaped indexing)."""
    with av.open(str(tmp_path / "tagged.mp4"), "w") as container:
        container.metadata["title"] = "XXXXXXXX"
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        _mux(container, stream, (av.VideoFrame.from_ndarray(render_frame(t, 96, 64, 1)) for t in range(9)))
    path = tmp_path / "latin1.mp4"
    path.write_bytes(
        (tmp_path / "tagged.mp4").read_bytes().replace(b"XXXXXXXX", "café bar".encode("latin-1"))
    )
    info = probe_video(path)
    assert info.num_frames == 9
    assert decode_video_frames(path, (0, 8), 96, 64, info.fps).shape == (2, 64, 96, 3)


def test_an_unknown_codec_tag_is_a_media_error(tmp_path):
    """A damaged or exotic codec tag leaves PyAV without a codec context: skip the file with a reason."""
    good = write_clip(tmp_path / "good.mp4", 96, 64, 9, 16, seed=1)
    path = tmp_path / "unknown.mp4"
    path.write_bytes(good.read_bytes().replace(b"avc1", b"zzzz"))
    with pytest.raises(MediaError, match="unknown.mp4: has a video stream in a codec FFmpeg cannot decode"):
        probe_video(path)
    with pytest.raises(MediaError, match="codec FFmpeg cannot decode"):
        decode_video_frames(path, (0,), 96, 64, 16.0)
