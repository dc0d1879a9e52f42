"""Video probing and decoding on real encoded files with container quirks (PyAV writes them here)."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from cadence.data.frames import plan_frames
from cadence.data.synthetic import render_frame
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


def _write_vfr(path: Path, ticks: list[int]) -> list[float]:
    """A clip whose frame k is shown after sum(ticks[:k]) / 90000 s; returns those times. Frame k carries its
    number in a corner patch (4 * k, read back from the decoded pixels)."""
    times, pts = [], 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "10"})
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
