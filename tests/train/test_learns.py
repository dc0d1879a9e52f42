"""It learns: held-out loss at fixed timesteps and fixed noise falls clearly after training."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.config.loader import load_config_dict
from cadence.train.eval import FixedEval
from cadence.train.loop import Trainer
from cadence.train.setup import build_training

from .conftest import job_dict

# Stated margin: the fixed-timestep eval loss after training is at most 85% of its value at step 0.
REQUIRED_RATIO = 0.85


@pytest.mark.slow
def test_fixed_timestep_eval_loss_falls(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    job = job_dict(tiny_i2v, clips, tmp_path / "run", steps=200, lr=2e-3, switch_boundary_every=10)
    job["datasets"][0]["caption_dropout_rate"] = 0.0
    cfg = load_config_dict(job, tmp_path / "job.yaml")
    setup = build_training(cfg)
    evaluator = FixedEval(
        list(range(len(setup.index.train_items))), setup.batches, setup.adapter.experts, setup.timesteps
    )
    before = evaluator.evaluate(setup.adapter, setup.device, setup.dtype)
    assert evaluator.evaluate(setup.adapter, setup.device, setup.dtype) == before, "eval must be repeatable"
    assert Trainer(setup).run() == 0
    after = evaluator.evaluate(setup.adapter, setup.device, setup.dtype)
    for key in ("eval_loss_high_noise", "eval_loss_low_noise", "eval_loss"):
        assert after[key] < REQUIRED_RATIO * before[key], (key, before[key], after[key])


def test_logit_normal_keys_reach_the_sampler(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    job = job_dict(
        tiny_i2v, clips, tmp_path / "run", timestep_type="logit_normal", logit_mean=0.7, logit_std=0.6
    )
    setup = build_training(load_config_dict(job, tmp_path / "job.yaml"))
    assert (setup.timesteps.kind, setup.timesteps.logit_mean, setup.timesteps.logit_std) == (
        "logit_normal",
        0.7,
        0.6,
    )
