"""The UI gives a job two GPUs: the runner starts it through torchrun with one worker per GPU, and the
job's end is what the workers made of it (never stuck). On a machine without two GPUs the workers stop with
the device error and the job shows failed: the first to fail says why, and torchrun then terminates the
other (within its monitor interval, so under load before it got as far as logging)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from cadence.ui.runner import JobRunner
from cadence.ui.store import Job, JobStore

from .conftest import job, write


@pytest.mark.slow
def test_a_job_on_two_gpus_runs_as_two_torchrun_workers_and_its_end_shows(
    tiny_i2v: Path, square_clips: Path, tmp_path: Path
) -> None:
    config = write(tmp_path / "job.yaml", job(tiny_i2v, square_clips, tmp_path / "out", steps=2))
    store = JobStore(tmp_path / "home" / "cadence.db")
    runner = JobRunner(store, tmp_path / "home", gpus=["0", "1"])
    store.add(
        Job("j2", "job", "queued", "0,1", config.read_text(), str(config), str(tmp_path / "out" / "job"))
    )
    runner.tick()
    assert store.get("j2").status == "running"
    deadline = time.monotonic() + 120
    while store.get("j2").status == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        runner.tick()
    final = store.get("j2")
    log = (runner.job_dir("j2") / "job.log").read_text()
    if torch.cuda.device_count() >= 2:
        assert final.status == "finished", log[-3000:]
    else:
        assert final.status == "failed" and final.exit_code == 1, (final, log[-3000:])
        assert "no CUDA GPU is visible" in log  # CUDA_VISIBLE_DEVICES=0,1 on a machine without them
        assert "local_rank: 1" in log or "local_rank: 0" in log  # torchrun's failure summary
