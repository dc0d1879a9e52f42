"""Tiny parent of one training process: `python -m cadence.ui.job_wrapper JOB_DIR -- CMD...`.

Why a wrapper: the UI may exit or be killed while a job runs, and then nobody could `wait()` for the
trainer's exit status. The wrapper is the process-group leader (the UI starts it in a new session), sends
the trainer's stdout/stderr to `JOB_DIR/job.log` and writes the exit status to `JOB_DIR/exit_code`
atomically when the trainer ends. A stop signal goes to the whole group, so the trainer receives it
directly; the wrapper itself only waits (its handlers are no-ops, which exec resets for the child).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cadence.atomic import atomic_write_text


def _ignore(signum: int, frame: object) -> None:
    """Keep the wrapper alive on SIGINT/SIGTERM; the trainer in the same group got the signal too."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m cadence.ui.job_wrapper JOB_DIR -- CMD [ARGS...]\n")
        return 2
    job_dir, cmd = Path(argv[0]), argv[2:]
    job_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
    with open(job_dir / "job.log", "ab", buffering=0) as log:
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.write(f"cadence ui: could not start {cmd[0]}: {exc}\n".encode())
            atomic_write_text(job_dir / "exit_code", "127\n")
            return 127
        atomic_write_text(job_dir / "child_pid", f"{proc.pid}\n")  # never seen empty by the runner
        code = proc.wait()
    atomic_write_text(job_dir / "exit_code", f"{code}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
