"""One trainer per run folder.

Two trainers on one folder destroy each other's work: the second one's resume deletes the first one's
half-written checkpoint as a leftover, and both append to one metrics file. A UI job whose wrapper was
killed, or a second terminal, can start that second trainer. An exclusive `flock` on `{run_dir}/.lock` held
for the trainer's whole life prevents it; the kernel drops the lock when the process dies, even on kill -9,
so a stale lock file never blocks a resume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cadence.folder_lock import pid_lock

LOCK_NAME = ".lock"
log = logging.getLogger(__name__)


class RunLockedError(ValueError):
    """Another live process trains into this run folder; the message says which and what to do."""


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)

    def busy(holder: str) -> RunLockedError:
        return RunLockedError(
            f"another cadence train (pid {holder}) is training into {run_dir}; wait for it or stop it "
            "(a UI job: its Stop button), or give this run another name / training_folder"
        )

    with pid_lock(
        run_dir / LOCK_NAME, busy, "nothing stops a second trainer on this run folder; run one at a time"
    ):
        yield
