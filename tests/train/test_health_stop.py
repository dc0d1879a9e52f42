"""A health rule in train.health.stop_on ends the run early and the recommended checkpoint survives pruning."""

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
@pytest.mark.parametrize(("save_every", "every"), [(10, None), (25, 10)], ids=["at-saves", "own-interval"])
def test_stop_on_rule_ends_run_and_keeps_best_checkpoint(
    tiny_i2v: Path, clips: Path, tmp_path: Path, save_every: int, every: int | None
) -> None:
    """With its own interval (`every` not on save steps) each check saves too, so the advice names a file."""
    job = job_dict(
        tiny_i2v,
        clips,
        tmp_path / "out",
        steps=200,
        switch_boundary_every=10,
        optimizer_params={"high_noise_lr": 2e-3, "low_noise_lr": 1e-3},
    )
    job["save"].update({"save_every": save_every, "max_step_saves_to_keep": 1})
    # character preset: a high-noise expert that outgrows the low-noise one is the warning sign. With a 2x LR
    # ratio and 10-step expert turns the |dW| ratio at the even checkpoints (20, 40, ..., 120: both experts
    # had their turns) measured 1.91x, 1.96x, 2.02x, 2.10x, 2.27x, 2.44x (each expert with its own noise
    # stream, rng.TrainingRandomness); the mid-round ones (30: high had 20 steps, low 10) read far more on
    # the schedule alone and must not count.
    job["train"]["health"] = {
        "preset": "character",
        "stop_on": ["weight_ratio_high"],
        "thresholds": {"weight_ratio_high": 2.14, "lr_ratio_high": None},
        "every": every,
    }
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    run = tmp_path / "out" / "job"
    rows = read_metrics(run / "metrics_job.jsonl")
    last = rows[-1]["step"]
    assert 10 < last < 200, "the run must stop early on the health rule"
    assert any("weight_ratio_high" in w for w in rows[-1].get("health_warnings", [])), rows[-1]
    log = (run / "log.txt").read_text()
    assert "health stop" in log
    kept = sorted(int(p.name.split("_")[1]) for p in run.glob("job_*_high_noise.safetensors"))
    assert last in kept
    assert any(step < last for step in kept), f"the best (earlier) checkpoint must be kept: {kept}"
    schema = json.loads(resources.files("cadence.metrics").joinpath("metrics_line.schema.json").read_text())
    for row in rows:
        jsonschema.validate(row, schema)
    assert "keeping checkpoint step" in rows[-1]["health_stop"]
    named = int(log.split("keeping checkpoint step ")[1].split()[0].rstrip(".;"))
    assert named in kept and (run / "training_state" / f"step_{named:09d}").is_dir()
    assert (last, named) == (
        100,
        80,
    )  # fired at the first even checkpoint above 2.14x; kept the even one before


@pytest.mark.slow
def test_health_history_survives_resume(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    """Growth is judged against checkpoints from before a resume: the monitor's history is restored."""
    from cadence.config.loader import load_config
    from cadence.train.setup import build_training

    spec = job_dict(tiny_i2v, clips, tmp_path / "out", steps=20, switch_boundary_every=10)
    spec["save"].update({"save_every": 10, "max_step_saves_to_keep": 2})
    spec["train"]["health"] = {"preset": "motion"}
    config = write_job(tmp_path / "a.yaml", spec)
    assert run_training(config) == 0
    spec["train"]["steps"] = 40
    setup = build_training(load_config(write_job(tmp_path / "a.yaml", spec)))
    try:
        assert setup.start_step == 20
        history = setup.checks.health.magnitudes
        assert sorted(history) == [10, 20] and set(history[20]) == {"high_noise", "low_noise"}
        assert history[20]["high_noise"].mean > 0
    finally:
        setup.close()
