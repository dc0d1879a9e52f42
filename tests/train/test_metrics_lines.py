"""Every metrics line a real run writes validates against the shipped JSON schema."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from cadence.metrics.jsonl import read_metrics
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


@pytest.mark.slow
def test_lines_validate_and_carry_per_expert_fields(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=60, switch_boundary_every=5)
    job["network"]["alpha_schedule"] = {
        "enabled": True,
        "conv_alpha_phases": {
            "foundation": {
                "alpha": 1,
                "min_steps": 10,
                "exit_criteria": {
                    "loss_improvement_rate_below": 10.0,
                    "min_gradient_stability": 0.0,
                    "min_loss_r2": 0.0,
                    "max_loss_cv": 100.0,
                },
            },
            "balance": {"alpha": 3, "min_steps": 10},
        },
    }
    job["datasets"][0]["is_eval"] = False
    job["train"]["eval_split"] = 0.2
    job["train"]["eval_every"] = 20
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    schema = json.loads(resources.files("cadence.metrics").joinpath("metrics_line.schema.json").read_text())
    rows = read_metrics(tmp_path / "out" / "job" / "metrics_job.jsonl")
    assert len(rows) == 60
    for row in rows:
        jsonschema.validate(row, schema)
        assert row["nan_skipped"] == 0  # on every line, so tooling can check it without knowing the history
    assert rows[-1]["loss_samples_high_noise"] + rows[-1]["loss_samples_low_noise"] == 60
    assert "eval_loss_high_noise" in rows[19] and "eval_loss_low_noise" in rows[39]
    assert rows[24]["weight_magnitude_high_noise"] > 0 and rows[24]["weight_ratio"] > 0
    # the conv-only schedule drives the linear adapters on Wan (only Linear layers are trained)
    alphas = {row["linear_alpha"] for row in rows}
    assert {1.0, 3.0} <= alphas, alphas


@pytest.mark.slow
def test_single_expert_lines_validate(tiny_models, clips: Path, tmp_path: Path) -> None:
    job = job_dict(tiny_models("wan21"), clips, tmp_path / "out", steps=25)
    job["model"]["arch"] = "wan21"
    del job["train"]["switch_boundary_every"]
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    schema = json.loads(resources.files("cadence.metrics").joinpath("metrics_line.schema.json").read_text())
    rows = read_metrics(tmp_path / "out" / "job" / "metrics_job.jsonl")
    for row in rows:
        jsonschema.validate(row, schema)
    assert rows[24]["weight_magnitude"] > 0 and rows[0]["expert"] is None


def test_logging_verbose_writes_cadence_debug_lines(tiny_i2v, clips, tmp_path):
    import logging

    from tests.train.conftest import job_dict, write_job

    from cadence.train.runner import run_training

    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=3)
    job["save"].update(save_every=1, max_step_saves_to_keep=1)
    job["logging"]["verbose"] = True
    before = logging.getLogger("cadence").level
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    text = (tmp_path / "out" / "job" / "log.txt").read_text()
    assert "DEBUG cadence.train.checkpoint: pruned checkpoint step 1" in text
    assert logging.getLogger("cadence").level == before  # restored for whatever runs next in this process


def test_prodigy_logs_the_step_size_it_applies(tiny_i2v, clips, tmp_path):
    """Prodigy's lr is a multiplier of its adapted distance d: the logged lr is d·lr, per expert."""
    from tests.train.conftest import job_dict, write_job

    from cadence.metrics.jsonl import read_metrics
    from cadence.train.runner import run_training

    job = job_dict(
        tiny_i2v, clips, tmp_path / "out", steps=6, switch_boundary_every=3, optimizer="prodigy", lr=1.0
    )
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    rows = read_metrics(tmp_path / "out" / "job" / "metrics_job.jsonl")
    high = [r["lr_high_noise"] for r in rows]
    assert all(0 < v < 1.0 for v in high) and len(set(high)) > 1  # d starts at d0 = 1e-6 and grows
    assert rows[-1]["lr_high_noise"] != rows[-1]["lr_low_noise"]  # one d per expert
