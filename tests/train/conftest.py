"""Real tiny Wan 2.2 I2V model and real synthetic clips, shared by the training tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadence.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "clips", n_videos=3, n_images=2, width=48, height=32, num_frames=17
    )


def job_dict(model: Path, data: Path, out: Path, **train: Any) -> dict[str, Any]:
    """A flat-layout job on the tiny model; keyword arguments override `train` keys."""
    train_section = {
        "steps": 12,
        "batch_size": 1,
        "lr": 1e-3,
        "dtype": "fp32",
        "gradient_checkpointing": False,
        "switch_boundary_every": 3,
        "disable_sampling": True,
        "seed": 7,
    }
    if os.environ.get("CADENCE_TEST_DETERMINISTIC") == "1":  # running these tests on a GPU (CADENCE_DEVICE)
        train_section["deterministic"] = True
    train_section.update(train)
    return {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
        "trigger_word": "sks",
        "network": {"type": "lora", "linear": 4, "linear_alpha": 2},
        "save": {"save_every": 100, "max_step_saves_to_keep": 10, "dtype": "float32"},
        "datasets": [
            {
                "folder_path": str(data),
                "resolution": [32],
                "num_frames": 5,
                "caption_dropout_rate": 0.3,
                "cache_latents_to_disk": True,
            }
        ],
        "train": train_section,
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": {"tensorboard": False},
    }


def write_job(path: Path, job: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path
