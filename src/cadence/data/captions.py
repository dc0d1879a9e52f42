"""Captions: same-stem text files, `[trigger]` substitution, default caption and caption dropout.

Missing captions are common and usually intended (a default caption or none), so they produce one summary
warning per dataset instead of one line per file.
"""

from __future__ import annotations

import random
import stat
from dataclasses import dataclass
from pathlib import Path

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


def apply_trigger(text: str, trigger_word: str | None) -> str:
    """The seed trainer's rule: `[trigger]` (and `[name]`) become the trigger word, and a caption that still
    lacks the trigger word gets it prepended ("sks a red ball"). Without a trigger word the tokens are
    removed. A caption dropped by caption dropout stays empty (unconditional), unlike the seed."""
    trigger = trigger_word or ""
    out = text.replace(TRIGGER_TOKEN, trigger).replace(NAME_TOKEN, trigger)
    if trigger.strip() and trigger not in out:
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
    media: Path, caption_ext: str, default_caption: str | None, trigger_word: str | None, stats: CaptionStats
) -> str:
    """The caption for `media`: its same-stem file (stripped) or the default caption (or "")."""
    path = caption_path(media, caption_ext)
    try:
        text = decode_caption(_read_regular(path), path, stats).strip()
    except FileNotFoundError:
        stats.missing += 1
        text = default_caption or ""
    except OSError as exc:
        stats.unreadable = (stats.unreadable or []) + [f"{path} ({_unreadable_reason(exc)})"]
        text = default_caption or ""
    if trigger_word is None and TRIGGER_TOKEN in text:
        stats.untriggered += 1
    return apply_trigger(text, trigger_word)


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
