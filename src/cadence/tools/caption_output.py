"""Where `cadence caption` writes, without ever losing a caption that is already there.

A file "has a caption" when the dataset loader would read one for it: its same-stem text file
(`clip.mp4` -> `clip.txt`, `--caption-ext`), else its entry in the folder's `captions.jsonl`
(`cadence.data.captions`). Such a file is left alone unless `--overwrite`.

- `text`: one same-stem file per caption, written atomically (`cadence.atomic`): after a kill -9 each
  caption is complete or absent, and the next run skips the complete ones.
- `jsonl`: `captions.jsonl` in the dataset folder, one `{"video_path"|"image_path": NAME, "caption": TEXT}`
  line per caption (musubi-tuner's keys; NAME is the file name the loader matches), appended and fsynced as
  each caption is produced. A kill -9 can only tear the last line: the loader ignores it and the next run
  rewrites the file without it (atomically) before appending. A replaced caption (`--overwrite`) is a later
  line for the same name; the file is compacted to one line per name when the run ends.

One run per folder: an exclusive `flock` on `.cadence_caption.lock` (hidden, so the loader never sees it),
released by the kernel when the process dies.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Protocol

from cadence.atomic import atomic_write_text
from cadence.data.captions import JSONL_NAME, caption_path, parse_jsonl_captions, parse_jsonl_line
from cadence.data.media import media_kind
from cadence.folder_lock import pid_lock
from cadence.tools.caption_args import FORMATS

log = logging.getLogger(__name__)
LOCK_NAME = ".cadence_caption.lock"


class CaptionOutputError(ValueError):
    """The output cannot be written as asked (a caption name that is media, a busy folder, ...)."""


class CaptionSink(Protocol):
    where: str  # for the summary: "clip.txt files" / "captions.jsonl"

    def existing(self, media: Path) -> str | None: ...
    def write(self, media: Path, text: str) -> None: ...
    def close(self) -> None: ...


def check_caption_ext(ext: str) -> str:
    """`ext` without its dot; refused when captions would be written over media or outside the folder."""
    clean = ext.strip().lstrip(".")
    if not clean or "/" in clean or "\\" in clean or ".." in clean:
        raise CaptionOutputError(f"--caption-ext {ext!r} is not a plain extension; use txt")
    if media_kind(Path("x." + clean)) is not None:
        raise CaptionOutputError(
            f"--caption-ext {ext!r} is a media extension: captions would be written over the files the loader "
            "trains on; use txt"
        )
    return clean


def _same_stem(media: Path, ext: str) -> str | None:
    """The same-stem caption's text ("" when empty or unreadable), or None when there is no such file."""
    path = caption_path(media, ext)
    if not os.path.lexists(path):
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    except OSError:
        return ""


class TextSink:
    """Same-stem caption files, one atomic write each."""

    def __init__(self, folder: Path, caption_ext: str) -> None:
        self.folder = folder
        self.ext = check_caption_ext(caption_ext)
        self.listed = _read_jsonl(folder / JSONL_NAME)
        self.where = f"same-stem .{self.ext} files"

    def existing(self, media: Path) -> str | None:
        found = _same_stem(media, self.ext)
        return found if found is not None else self.listed.get(media.name)

    def write(self, media: Path, text: str) -> None:
        target = caption_path(media, self.ext)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise CaptionOutputError(f"{target} is a link or not a regular file; it is left as it is")
        atomic_write_text(target, text + "\n")

    def close(self) -> None:
        return None


def _read_jsonl(path: Path) -> dict[str, str]:
    try:
        return parse_jsonl_captions(path.read_bytes()).captions
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CaptionOutputError(
            f"{path} cannot be read ({exc.strerror}); fix its permissions or move it"
        ) from None


class JsonlSink:
    """`captions.jsonl`: lines appended and fsynced one caption at a time (see the module docstring)."""

    def __init__(self, folder: Path, caption_ext: str) -> None:
        self.folder = folder
        self.ext = check_caption_ext(caption_ext)
        self.path = folder / JSONL_NAME
        self.where = str(self.path)
        self.entries, self.lines = self._repair()
        self.handle = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed in close()

    def _repair(self) -> tuple[dict[str, tuple[str, str]], int]:
        """Entries by name ((key, caption)); a file with a torn or unusable line is rewritten without it."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            raise CaptionOutputError(
                f"{self.path} is a link or not a regular file; move it or use --output-format text"
            )
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}, 0
        entries: dict[str, tuple[str, str]] = {}
        lines = [line for line in data.splitlines() if line.strip()]
        for line in lines:
            parsed = parse_jsonl_line(line)
            if parsed is not None:
                key, name, text = parsed
                entries[name] = (key, text)
        torn = bool(data) and not data.endswith(b"\n")
        if torn or any(parse_jsonl_line(line) is None for line in lines):
            log.warning("%s had a torn or unusable line (a killed run?); rewriting it without it", self.path)
            self._rewrite(entries)
            return entries, len(entries)
        return entries, len(lines)

    def _rewrite(self, entries: dict[str, tuple[str, str]]) -> None:
        atomic_write_text(self.path, "".join(_line(key, name, text) for name, (key, text) in entries.items()))

    def existing(self, media: Path) -> str | None:
        found = _same_stem(media, self.ext)  # the loader reads it first: a jsonl line would never be used
        if found is not None:
            return found
        entry = self.entries.get(media.name)
        return entry[1] if entry else None

    def shadowed(self, media: Path) -> bool:
        """True when a same-stem caption file hides whatever the jsonl says about `media`."""
        return _same_stem(media, self.ext) is not None

    def write(self, media: Path, text: str) -> None:
        key = "video_path" if media_kind(media) == "video" else "image_path"
        self.handle.write(_line(key, media.name, text).encode("utf-8"))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.entries[media.name] = (key, text)
        self.lines += 1

    def close(self) -> None:
        self.handle.close()
        if self.lines > len(self.entries):  # replaced captions: one line per name again
            self._rewrite(self.entries)
            self.lines = len(self.entries)


def _line(key: str, name: str, text: str) -> str:
    return json.dumps({key: name, "caption": text}, ensure_ascii=False) + "\n"


STALE_TEMP_S = 60.0


def sweep_temporaries(folder: Path, files: list[Path], caption_ext: str) -> int:
    """Delete the temp files a killed run left for these files' captions (`.clip.txt.XXXX.tmp`,
    `.captions.jsonl.XXXX.tmp`; hidden, so the loader never read them). Only names this tool writes, and only
    ones older than a minute (the UI's caption editor writes the same names)."""
    prefixes = {f".{caption_path(f, caption_ext).name}." for f in files} | {f".{JSONL_NAME}."}
    deadline = time.time() - STALE_TEMP_S
    removed = 0
    for leftover in folder.glob(".*.tmp"):
        if not any(leftover.name.startswith(p) for p in prefixes):
            continue
        try:
            if leftover.is_file() and not leftover.is_symlink() and leftover.stat().st_mtime < deadline:
                leftover.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def open_sink(output_format: str, folder: Path, caption_ext: str) -> TextSink | JsonlSink:
    if output_format == "text":
        return TextSink(folder, caption_ext)
    if output_format == "jsonl":
        return JsonlSink(folder, caption_ext)
    raise CaptionOutputError(f"--output-format {output_format!r} is not one of {', '.join(FORMATS)}")


@contextmanager
def caption_lock(folder: Path) -> Iterator[None]:
    """Exclusive for one `cadence caption` per dataset folder (see the module docstring)."""

    def busy(holder: str) -> CaptionOutputError:
        return CaptionOutputError(
            f"another cadence caption (pid {holder}) is captioning {folder}; wait for it or stop it "
            "(a UI caption job: its Stop button)"
        )

    held = ExitStack()
    try:
        held.enter_context(pid_lock(folder / LOCK_NAME, busy, "run one cadence caption per folder at a time"))
    except OSError as exc:
        raise CaptionOutputError(
            f"cannot write in {folder} ({exc.strerror}); captions are written there"
        ) from None
    with held:
        yield
