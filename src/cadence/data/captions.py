"""Captions: same-stem text files (else the folder's captions.jsonl), `[trigger]` substitution, default
caption and caption dropout.

Missing captions are common and usually intended (a default caption or none), so they produce one summary
warning per dataset instead of one line per file.
"""

from __future__ import annotations

import json
import logging
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TRIGGER_TOKEN = "[trigger]"


@dataclass
class CaptionStats:
    """What happened while reading one dataset's captions; turned into one warning line each."""

    missing: int = 0
    unreadable: list[str] | None = None  # read errors: the default caption is used
    legacy_encoding: list[str] | None = None  # not UTF-8/UTF-16: read as Windows-1252
    untriggered: int = 0  # captions with [trigger] while trigger_word is None (the token is removed)


def caption_path(media: Path, caption_ext: str) -> Path:
    return media.with_suffix("." + caption_ext.lstrip("."))


NAME_TOKEN = "[name]"


def apply_trigger(text: str, trigger_word: str | None, add: bool = True) -> str:
    """The seed trainer's rule: `[trigger]` (and `[name]`) become the trigger word, and a caption that still
    lacks the trigger word gets it prepended ("sks a red ball"; not with `add` False: regularisation sets).
    Without a trigger word the tokens are removed. A caption dropped by caption dropout stays empty
    (unconditional), unlike the seed."""
    trigger = trigger_word or ""
    out = text.replace(TRIGGER_TOKEN, trigger).replace(NAME_TOKEN, trigger)
    if add and trigger.strip() and trigger not in out:
        out = f"{trigger} {out}"
    return out.strip()


def decode_caption(raw: bytes, path: Path, stats: CaptionStats) -> str:
    """Caption text from its bytes: UTF-8 (a byte-order mark dropped), UTF-16 with a BOM (Windows Notepad's
    "Unicode"), else Windows-1252/Latin-1, counted so the folder's summary names such files."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode(
            "utf-16", errors="replace"
        )  # a truncated file loses its last character, not the run
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        stats.legacy_encoding = (stats.legacy_encoding or []) + [str(path)]
        return raw.decode("cp1252", errors="replace")


class NotRegularFileError(OSError):
    """A caption path that is a FIFO, socket or device: reading it would block indexing forever."""


def _read_regular(path: Path) -> bytes:
    """The bytes of `path`, refusing anything but a regular file before opening it (open() on a FIFO blocks
    until a writer appears)."""
    if not stat.S_ISREG(path.stat().st_mode):  # FileNotFoundError: no caption
        raise NotRegularFileError(f"{path} is not a regular file")
    return path.read_bytes()


def _unreadable_reason(exc: OSError) -> str:
    return "not a regular file" if isinstance(exc, NotRegularFileError) else exc.__class__.__name__


def read_caption(
    media: Path,
    caption_ext: str,
    default_caption: str | None,
    trigger_word: str | None,
    stats: CaptionStats,
    add_trigger: bool = True,
) -> str:
    """The caption for `media`: its same-stem file (stripped) or the default caption (or ""), trigger word in."""
    return apply_trigger(
        read_caption_text(media, caption_ext, default_caption, trigger_word, stats), trigger_word, add_trigger
    )


def read_caption_text(
    media: Path, caption_ext: str, default_caption: str | None, trigger_word: str | None, stats: CaptionStats
) -> str:
    """The caption text for `media` as read, before the trigger word is put in (token augmentation varies
    this text at batch time, then puts the trigger word in)."""
    path = caption_path(media, caption_ext)
    try:
        text = decode_caption(_read_regular(path), path, stats).strip()
    except FileNotFoundError:
        listed = jsonl_caption(media)  # a same-stem file wins over the folder's captions.jsonl
        if listed is None:
            stats.missing += 1
        text = listed.strip() if listed is not None else default_caption or ""
    except OSError as exc:
        stats.unreadable = (stats.unreadable or []) + [f"{path} ({_unreadable_reason(exc)})"]
        text = default_caption or ""
    if trigger_word is None and TRIGGER_TOKEN in text:
        stats.untriggered += 1
    return text


# ------------------------------------------------------------------------------------ captions.jsonl
JSONL_NAME = "captions.jsonl"
JSONL_KEYS = ("video_path", "image_path")  # musubi-tuner's metadata JSONL keys


@dataclass(frozen=True)
class JsonlCaptions:
    """A folder's `captions.jsonl`: media file name -> caption (the last line naming a file wins)."""

    captions: dict[str, str] = field(default_factory=dict)
    bad_lines: int = 0  # lines that are not a JSON object with a path key and a caption string


_jsonl_cache: dict[Path, tuple[tuple[int, int], JsonlCaptions]] = {}


def parse_jsonl_line(line: bytes | str) -> tuple[str, str, str] | None:
    """(key, media file name, caption) of one `{"video_path"|"image_path": NAME, "caption": TEXT}` line, or
    None when the line is not such an entry. NAME is reduced to its file name, so musubi-tuner's absolute paths
    match too."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
        return None
    key = next((k for k in JSONL_KEYS if k in entry), None)
    name = entry.get(key) if key else None
    if not isinstance(name, str) or not Path(name.replace("\\", "/")).name:
        return None
    return key, Path(name.replace("\\", "/")).name, entry["caption"]


def parse_jsonl_captions(data: bytes) -> JsonlCaptions:
    """The entries of a captions JSONL. A torn last line (a writer killed mid-line) or any other unusable
    line is counted, not fatal."""
    captions: dict[str, str] = {}
    bad = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        parsed = parse_jsonl_line(line)
        if parsed is None:
            bad += 1
        else:
            captions[parsed[1]] = parsed[2]
    return JsonlCaptions(captions, bad)


def read_jsonl_captions(folder: Path) -> JsonlCaptions:
    """`folder/captions.jsonl` (empty when there is none), re-read only when its size or mtime changed."""
    path = folder / JSONL_NAME
    try:
        info = path.stat()
    except OSError:
        return JsonlCaptions()
    stamp = (info.st_size, info.st_mtime_ns)
    cached = _jsonl_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        parsed = parse_jsonl_captions(_read_regular(path))
    except OSError as exc:
        log.warning("%s cannot be read (%s); its captions are not used", path, _unreadable_reason(exc))
        parsed = JsonlCaptions()
    if parsed.bad_lines:
        log.warning(
            '%s: %d lines are not {"video_path"|"image_path": NAME, "caption": TEXT} entries and are '
            "ignored (a torn last line is what a killed writer leaves; `cadence caption` repairs it)",
            path,
            parsed.bad_lines,
        )
    _jsonl_cache[path] = (stamp, parsed)
    return parsed


def jsonl_caption(media: Path) -> str | None:
    """The caption `captions.jsonl` beside `media` gives it, or None."""
    return read_jsonl_captions(media.parent).captions.get(media.name)


def caption_warnings(
    stats: CaptionStats, folder: Path, caption_ext: str, default_caption: str | None, total: int
) -> list[str]:
    """One line per kind of caption problem in a dataset folder."""
    lines: list[str] = []
    if stats.missing:
        used = f"default_caption {default_caption!r}" if default_caption else "an empty caption"
        lines.append(
            f"{stats.missing} of {total} media files in {folder} have no .{caption_ext} caption; using {used}. "
            f"Add same-stem .{caption_ext} files (clip.mp4 -> clip.{caption_ext}) or set default_caption."
        )
    if stats.unreadable:
        lines.append(
            f"{len(stats.unreadable)} caption files could not be read (the default caption is used): "
            f"{', '.join(stats.unreadable[:5])}. Replace them with plain text files or fix their permissions."
        )
    if stats.legacy_encoding:
        lines.append(
            f"{len(stats.legacy_encoding)} caption files are not UTF-8 and were read as Windows-1252 (Latin-1); "
            f"re-save them as UTF-8 if accented letters look wrong: {', '.join(stats.legacy_encoding[:5])}"
        )
    if stats.untriggered:
        lines.append(
            f"{stats.untriggered} captions in {folder} contain [trigger] but trigger_word is not set; "
            "the token is removed (as the seed trainer does). Set trigger_word in the config."
        )
    return lines


def apply_caption_dropout(caption: str, rate: float, rng: random.Random) -> str:
    """Return "" with probability `rate` (the unconditional caption), else the caption unchanged.

    The draw happens even for rate 0 so that the RNG stream does not depend on the rate.
    """
    return "" if rng.random() < rate else caption
