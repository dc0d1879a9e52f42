"""A second trainer on a live run folder is refused; a killed holder never blocks the resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cadence.train.runner import run_training

from .conftest import job_dict, write_job

HOLD = """
import sys, time
from pathlib import Path
from cadence.train.run_lock import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_second_trainer_is_refused_until_the_first_dies(
    tiny_i2v: Path, clips: Path, tmp_path: Path, caplog
) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=2)
    config = write_job(tmp_path / "job.yaml", job)
    run_dir = tmp_path / "out" / "job"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert run_training(config) == 2
        assert f"another cadence train (pid {holder.pid}) is training into {run_dir}" in caplog.text
        assert not (run_dir / "training_state").exists(), "refused before touching the run"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert run_training(config) == 0  # the kernel released the dead holder's lock
    assert (run_dir / "training_state").is_dir()
