"""`cadence cache CONFIG` fills exactly the caches `cadence train CONFIG` reads: training encodes nothing."""

from __future__ import annotations

import shutil
from argparse import Namespace
from pathlib import Path

from cadence.data.cache_command import cache_command
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


def test_train_reuses_what_cache_command_wrote(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(clips, data, ignore=shutil.ignore_patterns("_cadence_cache"))
    job = job_dict(tiny_i2v, data, tmp_path / "out", steps=2)
    job["datasets"][0]["cache_latents_to_disk"] = False  # run-private cache: the default, and the tricky case
    config = write_job(tmp_path / "job.yaml", job)
    assert cache_command(Namespace(config=str(config))) == 0
    assert run_training(config) == 0
    log = (tmp_path / "out" / "job" / "log.txt").read_text()
    assert "(0 encoded now)" in log, log
    assert not (data / "_cadence_cache").exists()
