"""This machine's problems (GPU, packages) and target filters that match nothing are reported before model
loading and caching: by `cadence validate` and at the start of `cadence train`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cadence.train.runner import run_training

from .conftest import job_dict, write_job

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA reports")


def _seed_layout(job: dict) -> dict:
    return {
        "job": "extension",
        "config": {"name": job.pop("name"), "process": [{"type": "sd_trainer", **job}]},
    }


@CPU_ONLY
def test_validate_reports_this_machine_at_the_users_keys(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", optimizer="adamw8bit", attention_backend="flash")
    job["device"] = "cuda:0"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_seed_layout(job)))
    cli = [sys.executable, "-m", "cadence.cli", "validate"]
    done = subprocess.run([*cli, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "config.process[0].device: 'cuda:0' was asked for but no CUDA GPU is visible" in done.stderr
    assert "config.process[0].train.optimizer: adamw8bit needs bitsandbytes" in done.stderr
    assert "config.process[0].train.attention_backend: 'flash' is not usable here" in done.stderr
    portable = subprocess.run([*cli, "--config-only", str(path)], capture_output=True, text=True, timeout=300)
    assert portable.returncode == 0, portable.stderr


def test_train_refuses_before_loading_and_caching(
    tiny_i2v: Path, clips: Path, tmp_path: Path, caplog
) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", attention_backend="flash3")
    assert run_training(write_job(tmp_path / "a.yaml", job)) == 2
    assert (
        "train.attention_backend: 'flash3' runs only on CUDA GPUs" in caplog.text or torch.cuda.is_available()
    )
    assert "loading" not in caplog.text.lower()
    job = job_dict(tiny_i2v, clips, tmp_path / "out2")
    job["network"]["network_kwargs"] = {"only_if_contains": ["transformer.transformer_blocks."]}
    caplog.clear()
    assert run_training(write_job(tmp_path / "b.yaml", job)) == 2
    assert "no module matched the LoRA target filters" in caplog.text
    assert not (tmp_path / "out2" / "job" / "latent_cache").exists(), "must refuse before caching"
