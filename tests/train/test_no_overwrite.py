"""A run folder with LoRA files but no usable training state never restarts at step 0 over them: it falls
back to the newest readable checkpoint, or stops and says what to do (`--restart`, another name)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from cadence.metrics.jsonl import read_metrics
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


def _sums(run: Path) -> dict[str, str]:
    files = [*run.glob("*.safetensors"), run / "metrics_job.jsonl"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def trained(tiny_i2v: Path, clips: Path, tmp_path: Path):
    """A finished 4-step run with checkpoints at steps 2 and 4; returns (config writer, run folder)."""

    def config(steps: int) -> Path:
        job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=steps)
        job["save"]["save_every"] = 2
        return write_job(tmp_path / "job.yaml", job)

    assert run_training(config(4)) == 0
    return config, tmp_path / "out" / "job"


def test_deleted_state_refuses_before_touching_anything(trained, caplog) -> None:
    config, run = trained
    shutil.rmtree(run / "training_state")
    before = _sums(run)
    log_before = (run / "log.txt").read_text()
    assert run_training(config(6)) == 2
    err = caplog.text
    assert "holds LoRA files of 2 checkpoint(s) (step 2 ... 4) and 4 metrics lines" in err
    assert "--restart" in err and "another `name`" in err and "Traceback" not in err
    assert _sums(run) == before
    assert (run / "log.txt").read_text() == log_before, "refused before the model was even loaded"


def test_garbage_newest_state_falls_back_to_the_one_before(trained, caplog) -> None:
    config, run = trained
    (run / "training_state" / "step_000000004" / "state.pt").write_bytes(b"\x80\x04garbage, not a pickle")
    assert run_training(config(6)) == 0
    assert "the checkpoint of step 4 cannot be read" in caplog.text
    assert (run / "training_state" / "unreadable_step_000000004" / "state.pt").is_file()  # kept to inspect
    assert [row["step"] for row in read_metrics(run / "metrics_job.jsonl")] == list(range(1, 7))
    assert sorted(p.name for p in (run / "training_state").glob("step_*")) == [
        "step_000000002",
        "step_000000004",
        "step_000000006",
    ]


def test_every_state_unreadable_stops_with_advice_not_a_traceback(trained, capsys, caplog) -> None:
    config, run = trained
    for state in (run / "training_state").glob("step_*/state.pt"):
        state.write_bytes(b"not a checkpoint")
    (run / "training_state" / "step_000000002" / "adapters.safetensors").write_bytes(b"\x00" * 7)
    before = _sums(run)
    assert run_training(config(6)) == 2
    assert "its training state is unreadable" in caplog.text and "--restart" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert _sums(run) == before


def test_restart_moves_the_previous_run_aside(trained) -> None:
    config, run = trained
    shutil.rmtree(run / "training_state")
    before = _sums(run)
    from cadence.cli import main

    assert main(["train", str(config(4)), "--restart"]) == 0
    previous = list((run / "previous").iterdir())
    assert len(previous) == 1
    assert _sums(previous[0]) == before  # every old file kept, byte for byte
    assert (run / "training_state" / "step_000000004").is_dir()
    assert [row["step"] for row in read_metrics(run / "metrics_job.jsonl")] == [1, 2, 3, 4]


def test_an_io_error_while_reading_sets_nothing_aside(trained, caplog, monkeypatch) -> None:
    """EIO on a network mount (simulated: root ignores file modes) is the machine, not the checkpoint: the run
    stops saying so, every state folder stays where it is, and the next run resumes normally."""
    import errno

    import torch

    from cadence.train import checkpoint

    config, run = trained
    real_load = torch.load

    def flaky(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint.torch, "load", flaky)
    assert run_training(config(6)) == 2
    assert "nothing was changed" in caplog.text and "run again" in caplog.text
    assert sorted(p.name for p in (run / "training_state").iterdir()) == ["step_000000002", "step_000000004"]
    monkeypatch.setattr(checkpoint.torch, "load", real_load)
    assert run_training(config(6)) == 0
    assert (run / "training_state" / "step_000000006").is_dir()
