"""One trainer per run folder.

Two trainers on one folder destroy each other's work: the second one's resume deletes the first one's
half-written checkpoint as a leftover, and both append to one metrics file. A UI job whose wrapper was
killed, or a second terminal, can start that second trainer. An exclusive `flock` on `{run_dir}/.lock` held
for the trainer's whole life prevents it; the kernel drops the lock when the process dies, even on kill -9,
so a stale lock file never blocks a resume.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)


class RunLockedError(ValueError):
    """Another live process trains into this run folder; the message says which and what to do."""


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    writable = True
    try:  # 0o666: the umask decides, as for every other file of the run (a shared group folder)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: flock needs no write access
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"another cadence train (pid {holder}) is training into {run_dir}; wait for it or stop it "
                "(a UI job: its Stop button), or give this run another name / training_folder"
            ) from None
        except OSError as exc:  # a filesystem without flock (some network and FUSE mounts)
            log.warning(
                "cannot lock %s (%s): nothing stops a second trainer on this run folder; run one at a time",
                path,
                exc.strerror or exc,
            )
            writable = False
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
