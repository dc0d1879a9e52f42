"""One process at a time on a folder: an exclusive `flock` on a lock file that holds the owner's pid.

The kernel drops the lock when its process dies, even on kill -9, so a stale lock file never blocks the
next run. Used for run folders (one trainer each) and dataset folders (one `cadence caption` each).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], Exception], without_flock: str) -> Iterator[None]:
    """Hold `path` exclusively. Another live holder: `busy(its pid)` is raised. A filesystem without flock
    (some network and FUSE mounts): a warning ending in `without_flock`, and the body runs unlocked. Another
    user's lock file (no write access): locked read-only, as flock needs no write access. An OSError
    opening the file otherwise propagates, for the caller to word."""
    writable = True
    try:  # 0o666: the umask decides, as for every other file there (a shared group folder)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        if not path.exists():
            raise
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise busy(holder) from None
        except OSError as exc:
            log.warning("cannot lock %s (%s): %s", path, exc.strerror or exc, without_flock)
            writable = False
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
