"""Atomic file writes: a file is either complete or absent, even after kill -9.

Write to a temporary file in the same folder, fsync it, rename over the target, then fsync the folder so
the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe to probe


def remove_stale_temporaries(folder: Path, older_than_s: float = 0.0) -> int:
    """Delete temp files a killed writer left behind in `folder` (never a published file). With
    `older_than_s`, only those last written that long ago: a folder other processes may write into (a shared
    cache) can hold a live writer's temp file."""
    removed = 0
    deadline = time.time() - older_than_s
    for leftover in folder.glob(".*.tmp"):
        try:
            if leftover.is_file() and (not older_than_s or leftover.stat().st_mtime < deadline):
                leftover.unlink(missing_ok=True)
                removed += 1
        except FileNotFoundError:  # its writer published or removed it meanwhile
            continue
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename/creation inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path | str, overwrite: bool = True, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is fsynced and renamed onto `target`.

    `mode`: the published file's permissions (default: a normal file's, after the umask); the temp file is
    0600 while it is written, so a secret written with `mode=0o600` is never readable by others.

    `overwrite=False` publishes with a hard link instead of a rename, which fails with FileExistsError when
    `target` exists, even if another writer created it a moment ago (no check-then-write race)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp (and some writers, e.g. safetensors) make 0600; outputs get a normal file's permissions
        os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: Path | str, data: bytes, mode: int | None = None) -> None:
    with atomic_path(target, mode=mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path | str, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_with(target: Path | str, writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` (e.g. safetensors.torch.save_file) and publish the result atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
