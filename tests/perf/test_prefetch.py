"""Batches read ahead on a background thread (issue 23) train exactly what the step reads itself: same LoRA
files and metrics, bit for bit, with gradient accumulation, caption dropout and both experts taking turns;
the noise stream's state says where it is drawn."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cadence.config.loader import load_config_dict
from cadence.data.synthetic import write_synthetic_dataset
from cadence.metrics.jsonl import read_metrics
from cadence.train.loop import Trainer
from cadence.train.rng import TrainingRandomness
from cadence.train.setup import build_training

VOLATILE = {"timestamp", "step_time_s", "data_time_s", "samples_per_s", "peak_memory_gb"}


def _job(model: Path, clips: Path, out: Path) -> dict:
    return {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
        "network": {"linear": 4, "linear_alpha": 2},
        "save": {"save_every": 100, "dtype": "float32"},
        "datasets": [
            {"folder_path": str(clips), "resolution": [32], "num_frames": 5, "caption_dropout_rate": 0.4}
        ],
        "train": {
            "steps": 6,
            "batch_size": 1,
            "gradient_accumulation": 2,
            "lr": 1e-3,
            "dtype": "fp32",
            "gradient_checkpointing": False,
            "switch_boundary_every": 2,
            "disable_sampling": True,
            "seed": 3,
        },
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": {"tensorboard": False},
    }


@pytest.mark.slow
def test_read_ahead_batches_train_bit_for_bit_what_the_step_reads_itself(
    tiny_i2v: Path, tmp_path: Path
) -> None:
    clips = write_synthetic_dataset(
        tmp_path / "clips", n_videos=3, n_images=2, width=48, height=32, num_frames=9
    )
    runs = {}
    for name, prefetch in (("plain", False), ("ahead", True)):
        setup = build_training(
            load_config_dict(_job(tiny_i2v, clips, tmp_path / name), tmp_path / f"{name}.yaml")
        )
        trainer = Trainer(setup, prefetch=prefetch)
        assert trainer.run() == 0
        runs[name] = (setup.paths.run_dir, trainer.prefetch)
    ahead = runs["ahead"][1]
    assert ahead is not None and ahead.misses == 0
    assert ahead.hits == 6 * 2 - 1  # every micro-batch but the first came from the background read
    rows = {
        name: [
            {k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run / "metrics_job.jsonl")
        ]
        for name, (run, _) in runs.items()
    }
    assert rows["plain"] == rows["ahead"] and len(rows["plain"]) == 6
    for expert in ("high_noise", "low_noise"):
        a, b = (load_file(run / f"job_000000006_{expert}.safetensors") for run, _ in runs.values())
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    state = torch.load(runs["ahead"][0] / "training_state/step_000000006/state.pt", weights_only=False)
    plain = torch.load(runs["plain"][0] / "training_state/step_000000006/state.pt", weights_only=False)
    assert state["sampler"] == plain["sampler"]  # what a resume continues from is untouched by the guesses
    for expert, streams in state["randomness"]["streams"].items():
        other = plain["randomness"]["streams"][expert]
        assert streams["captions"] == other["captions"] and streams["noise"].equal(other["noise"])


def test_noise_stream_state_names_its_device_and_a_foreign_one_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = TrainingRandomness(5, ("high_noise", "low_noise"))
    torch.randn(3, generator=a.of("low_noise").noise)
    state = a.state_dict()
    assert state["streams"]["low_noise"]["noise_device"] == "cpu"
    b = TrainingRandomness(5, ("high_noise", "low_noise"))
    b.load_state_dict(state)
    assert torch.equal(
        torch.randn(4, generator=a.of("low_noise").noise), torch.randn(4, generator=b.of("low_noise").noise)
    )
    state["streams"]["low_noise"]["noise_device"] = "cuda"  # saved by a run that drew its noise on a GPU
    c = TrainingRandomness(5, ("high_noise", "low_noise"))
    with caplog.at_level(logging.WARNING, logger="cadence.train.rng"):
        c.load_state_dict(state)
    assert "restarts from its seed" in caplog.text
    fresh = TrainingRandomness(5, ("high_noise", "low_noise"))
    assert torch.equal(
        torch.randn(4, generator=c.of("low_noise").noise),
        torch.randn(4, generator=fresh.of("low_noise").noise),
    )
    assert c.of("low_noise").captions.getstate() == a.of("low_noise").captions.getstate()  # the rest resumed
