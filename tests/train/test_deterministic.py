"""`train.deterministic`: deterministic kernels during the run only, and a clear stop where torch has none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cadence.metrics.jsonl import read_metrics
from cadence.train.loop import Trainer
from cadence.train.runner import run_training

from .conftest import job_dict, write_job

# measurements of the machine, not of training (peak_memory_gb is 0 on the CPU, allocator-dependent on CUDA)
VOLATILE = {"timestamp", "step_time_s", "data_time_s", "samples_per_s", "peak_memory_gb"}
LOG_LINE = "train.deterministic: deterministic kernels only"


def _global_flags() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def _rows(run: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in VOLATILE} for row in read_metrics(run / "metrics_job.jsonl")
    ]


@pytest.mark.slow
def test_deterministic_run_uses_deterministic_kernels_then_restores_the_flags(
    tiny_i2v: Path, clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test
    before = _global_flags()
    assert before == (False, False, False)
    seen: list[tuple] = []
    train_step = Trainer.train_step

    def spy(self: Trainer):
        seen.append((*_global_flags(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", spy)
    runs = {}
    for name, deterministic in (("plain", False), ("det", True)):
        seen.clear()
        job = job_dict(tiny_i2v, clips, tmp_path / name, steps=4, deterministic=deterministic)
        assert run_training(write_job(tmp_path / f"{name}.yaml", job)) == 0
        runs[name] = list(seen)
        assert _global_flags() == before, "the run must put the global torch flags back"

    assert runs["plain"] == [(False, False, False, None)] * 4
    assert runs["det"] == [(True, True, False, ":4096:8")] * 4
    assert LOG_LINE in (tmp_path / "det" / "job" / "log.txt").read_text()
    assert LOG_LINE not in (tmp_path / "plain" / "job" / "log.txt").read_text()
    # CPU kernels are deterministic already: the switch changes no number here
    assert _rows(tmp_path / "plain" / "job") == _rows(tmp_path / "det" / "job")


@pytest.mark.slow
def test_an_op_without_deterministic_kernel_stops_with_a_message_naming_the_key(
    tiny_i2v: Path, clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)

    def refuse(self: Trainer):
        # what torch raises for e.g. a CUDA backward that only has an atomics-based kernel
        if torch.are_deterministic_algorithms_enabled():
            raise RuntimeError(
                "fake_backward_cuda does not have a deterministic implementation, but you set "
                "'torch.use_deterministic_algorithms(True)'."
            )
        raise RuntimeError("a different failure")

    monkeypatch.setattr(Trainer, "train_step", refuse)
    job = job_dict(tiny_i2v, clips, tmp_path / "det", steps=2, deterministic=True)
    assert run_training(write_job(tmp_path / "det.yaml", job)) == 2
    log = (tmp_path / "det" / "job" / "log.txt").read_text()
    assert "train.deterministic: true asks for deterministic kernels only" in log
    assert "fake_backward_cuda" in log and "train.deterministic: false" in log
    assert not torch.are_deterministic_algorithms_enabled()

    # other runtime errors are not dressed up as a determinism problem
    job = job_dict(tiny_i2v, clips, tmp_path / "plain", steps=2)
    with pytest.raises(RuntimeError, match="a different failure"):
        run_training(write_job(tmp_path / "plain.yaml", job))
