"""Video probing and frame decoding with PyAV.

Probing reads container/stream headers only. Decoding seeks to the keyframe before the first wanted frame
and decodes forward, keeping only wanted frames and stopping after the last one, so a long clip is never
read whole. Each kept frame is scaled (cover) and converted by libswscale, then center-cropped to the
bucket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from cadence.data.buckets import center_crop_box, cover_size
from cadence.data.media import MediaError, require_regular_file

log = logging.getLogger(__name__)

# frames missing at the very end (container metadata promising one or two frames more than the stream has)
# are filled with the last decoded frame; more than this is a broken file.
MAX_MISSING_TAIL = 2
_REENCODE = "re-encode it (e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4) or remove it"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    num_frames: int
    fps: float
    duration: float  # seconds
    rotation: int = (
        0  # degrees counterclockwise the display matrix turns the stored frames (width/height: shown)
    )


# what PyAV raises for a corrupt, truncated or swapped file: libav errors (av.FFmpegError), the OS failing to
# read it, and ValueError for frames it cannot convert (an unexpected pixel format)
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError)
# a declared rate whose frames/fps misses the real duration by more than this is replaced by frames/duration
_RATE_TOLERANCE = 0.1


def _open(path: Path) -> av.container.InputContainer:
    try:
        # tags written in Latin-1 by old cameras/tools would raise UnicodeDecodeError: the tags are not used
        return av.open(str(path), mode="r", metadata_errors="replace")
    except (av.FFmpegError, OSError, ValueError) as exc:
        require_regular_file(path)  # gone, unreadable or a FIFO since the caller checked: say so
        if isinstance(exc, PermissionError):
            raise MediaError(path, "cannot be read (permission denied)", "fix its permissions") from exc
        raise MediaError(path, f"is not a readable video ({exc.__class__.__name__})", _REENCODE) from exc


def _video_stream(path: Path, container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream; a file with none (audio only, or swapped for one after indexing) is skipped."""
    if not container.streams.video:
        raise MediaError(path, "has no video stream", "remove it or convert it to a video file")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a codec tag FFmpeg does not know (damaged header, exotic codec)
        raise MediaError(path, "has a video stream in a codec FFmpeg cannot decode", _REENCODE)
    return stream


def _refuse_still_image(path: Path, container: av.container.InputContainer) -> None:
    """An image renamed .mp4 opens as a one-frame "video" and would be reported as too short."""
    name = container.format.name
    if name.endswith("_pipe") or name == "image2":
        kind = name.removesuffix("_pipe").upper() if name != "image2" else "still"
        raise MediaError(
            path,
            f"is a {kind} image with a video extension",
            "rename it with its image extension (.png, .jpg, .webp) or remove it",
        )


def probe_video(path: Path) -> VideoInfo:
    """Size, frame count, rate and duration from the headers, without decoding frames."""
    require_regular_file(path)
    try:
        return _probe(path)
    except _DECODE_ERRORS as exc:  # a container that opens but fails while its packets are read
        raise MediaError(path, f"failed to read ({exc.__class__.__name__}: {exc})", _REENCODE) from exc


def _probe(path: Path) -> VideoInfo:
    with _open(path) as container:
        _refuse_still_image(path, container)
        stream = _video_stream(path, container)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        rotation = _display_rotation(container, stream)
        if rotation % 180:  # phone clips: stored landscape, shown portrait (or the reverse)
            width, height = height, width
        frames, duration = _frames_and_duration(container, stream, fps)
    fps = _rate_over_duration(frames, duration, fps)
    if fps <= 0 or frames <= 0 or width <= 0 or height <= 0:
        raise MediaError(
            path, f"has no usable frames (size {width}x{height}, {frames} frames, {fps:g} fps)", _REENCODE
        )
    return VideoInfo(width, height, frames, fps, duration or frames / fps, rotation)


def _frames_and_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float
) -> tuple[int, float]:
    """(frames shown, seconds) of the stream, from the headers where they can be trusted."""
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    if stream.frames:
        if duration and fps > 0 and duration * fps < stream.frames - 0.5:
            # an edit list (a stream-copy cut, `ffmpeg -ss T -c copy`) hides frames the header still counts;
            # the demuxer flags them as discarded: count the others
            return _count_packets(container, stream)
        return int(stream.frames), duration
    if duration:
        return (round(duration * fps) if fps > 0 else 0), duration
    # Matroska/WebM store no per-stream count or duration, and the container's duration covers the longest
    # stream (often the audio): count the video packets instead (demuxed, not decoded)
    return _count_packets(container, stream)


def _rate_over_duration(frames: int, duration: float, fps: float) -> float:
    """The rate that maps frame i to time i / rate over the real clip.

    Matroska/WebM declare the rate of their first frames, so a variable-rate clip (a screen recording that
    slows down, clips joined with concat) counts more or fewer frames than declared_rate x duration: index
    i / fps would then cover only part of the clip (its end repeating the last frame) or run past its end.
    When the two disagree by more than 10 % the clip's mean rate, frames / duration, is used instead.
    """
    if frames <= 0 or duration <= 0:
        return fps
    if fps <= 0 or abs(frames / fps - duration) > _RATE_TOLERANCE * duration:
        return frames / duration
    return fps


def _display_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display matrix's rotation (0, 90, 180 or 270, counterclockwise), read from the first decoded frame
    (PyAV exposes it on frames only); the container is rewound afterwards."""
    try:
        frame = next(container.decode(stream), None)
        container.seek(0, stream=stream, backward=True)
    except av.FFmpegError:
        return 0  # decoding fails again later with a clear, skippable error
    return 0 if frame is None else _quarter_turns(frame) * 90


def _quarter_turns(frame: av.VideoFrame) -> int:
    return round((frame.rotation or 0) / 90) % 4


def _count_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[int, float]:
    """(frames, seconds) shown by a video stream, from its packets: one packet per frame for video codecs.

    Packets an mp4 edit list hides are flagged discarded and not counted. A last packet without a duration
    is given the clip's mean frame interval, so a short clip's length is not one frame short.
    """
    frames, first, last, last_length = 0, None, None, 0.0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # the demuxer's flush packet; frames an edit list hides
            continue
        frames += 1
        if packet.pts is None or packet.time_base is None:
            continue
        seconds = float(packet.pts * packet.time_base)
        first = seconds if first is None else min(first, seconds)
        if last is None or seconds >= last:
            last = seconds
            last_length = float(packet.duration * packet.time_base) if packet.duration else 0.0
    if first is None or last is None:
        return frames, 0.0
    if not last_length and frames > 1:
        last_length = (last - first) / (frames - 1)
    known = stream.start_time is not None and stream.time_base is not None
    start = float(stream.start_time * stream.time_base) if known else first
    return frames, max(last + last_length - start, 0.0)


def decode_video_frames(
    path: Path, indices: tuple[int, ...], width: int, height: int, fps: float
) -> np.ndarray:
    """Decode frames `indices` (ascending source indices), cover-resized and center-cropped to
    width x height; returns uint8 [F, height, width, 3] RGB.

    Index i means the frame shown at time i / fps (probe_video's rate: the mean rate over the clip where the
    declared one does not fit its duration): each is the decoded frame whose timestamp is nearest to it. On a
    constant-rate stream that is frame i exactly; on a variable-rate one (phone clips, screen recordings) a
    stall or jitter no longer shifts or drops frames.
    """
    out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    slots: dict[int, list[int]] = {}
    for slot, index in enumerate(indices):
        slots.setdefault(index, []).append(slot)
    targets = sorted(slots)  # source indices, each shown at index / fps
    convert = _BucketConverter(width, height)
    done = 0
    last: tuple[float, av.VideoFrame, float] | None = None  # latest decoded frame: (shown until, frame, from)

    def take(index: int, frame: av.VideoFrame, cache: dict[int, np.ndarray]) -> None:
        pixels = cache.get(id(frame))
        if pixels is None:
            pixels = cache[id(frame)] = convert(frame)
        for slot in slots[index]:
            out[slot] = pixels

    require_regular_file(path)  # deleted, emptied or turned into a FIFO since indexing: say so, never block
    try:
        with _open(path) as container:
            _refuse_still_image(path, container)
            stream = _video_stream(path, container)
            stream.thread_type = "AUTO"
            tb = stream.time_base
            start = stream.start_time or 0
            if targets[0] > 0:
                # half a frame early, then back to the keyframe before: the nearest frame is never skipped
                container.seek(start + int((targets[0] - 0.5) / fps / tb), stream=stream, backward=True)
            counter = -1
            for frame in container.decode(stream):
                counter += 1
                seconds = float((frame.pts - start) * tb) if frame.pts is not None else counter / fps
                cache: dict[int, np.ndarray] = {}
                while done < len(targets) and seconds >= targets[done] / fps:
                    target = targets[done] / fps
                    nearer_last = last is not None and target - last[2] < seconds - target
                    take(targets[done], last[1] if nearer_last else frame, cache)
                    done += 1
                if done == len(targets):
                    break
                shown = (
                    float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1 / fps
                )
                last = (seconds + shown, frame, seconds)  # (shown until, frame, shown from)
            if done < len(targets):
                _fill_tail(path, targets[done:], last, fps, lambda index, frame: take(index, frame, {}))
    except _DECODE_ERRORS as exc:
        raise MediaError(path, f"failed to decode ({exc.__class__.__name__}: {exc})", _REENCODE) from exc
    return out


def _fill_tail(path: Path, missing: list[int], last, fps: float, take) -> None:
    """Frames wanted after the stream's last one: those within the last frame's display time (a held final
    frame) or one or two frames past it (a container promising more than the stream has) get the last frame;
    more than that is a broken file."""
    if last is None or missing[-1] / fps - last[0] > (MAX_MISSING_TAIL - 0.5) / fps:
        raise MediaError(
            path, f"ended before frames {missing[:5]} (metadata promised more frames)", _REENCODE
        )
    log.debug("%s: %d trailing frames missing, repeating the last one", path, len(missing))
    for index in missing:
        take(index, last[1])


class _BucketConverter:
    """Frame -> RGB bucket crop, with libswscale contexts reused across the frames of one clip.

    Scaling in the decoder's planar YUV format and then converting to RGB unscaled hits libswscale's
    fast paths; scaling straight into packed rgb24 takes its slow generic path (measured 3.5x slower at
    832x480 -> 672x384), and a fresh context per frame re-initializes the filters every time.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.scaler = VideoReformatter()
        self.to_rgb = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        turns = _quarter_turns(frame)  # the display matrix: scale the stored frame, then turn it upright
        shown = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        cw, ch = cover_size(*shown, self.width, self.height)
        stored = (ch, cw) if turns % 2 else (cw, ch)
        if stored != (frame.width, frame.height):
            frame = self.scaler.reformat(frame, width=stored[0], height=stored[1], interpolation="AREA")
        rgb = self.to_rgb.reformat(frame, format="rgb24").to_ndarray()
        if turns:
            rgb = np.rot90(rgb, k=turns)
        left, top, right, bottom = center_crop_box(cw, ch, self.width, self.height)
        return rgb[top:bottom, left:right]
