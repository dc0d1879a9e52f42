"""`cadence train` with sampling: motion in the sidecars, the metrics lines, TensorBoard, the data reference."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from PIL import Image

from cadence.data.synthetic import write_synthetic_dataset
from cadence.metrics.jsonl import read_metrics
from cadence.metrics.motion import file_digest
from cadence.train.runner import run_training


@pytest.mark.slow
def test_training_measures_sample_motion_and_the_datas(tiny_i2v: Path, tmp_path: Path) -> None:
    data = write_synthetic_dataset(
        tmp_path / "clips", n_videos=2, n_images=1, width=48, height=32, num_frames=9
    )
    ctrl = tmp_path / "first.png"
    Image.fromarray((np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)).save(ctrl)
    job = {
        "name": "job",
        "training_folder": str(tmp_path / "out"),
        "device": "cpu",
        "network": {"type": "lora", "linear": 4, "linear_alpha": 2},
        "model": {"name_or_path": str(tiny_i2v), "arch": "wan22_14b_i2v"},
        "datasets": [{"folder_path": str(data), "resolution": [32], "num_frames": 5}],
        "train": {
            "steps": 4,
            "lr": 1e-3,
            "dtype": "fp32",
            "disable_sampling": False,
            "gradient_checkpointing": False,
            "health": {"preset": "motion"},
        },
        "save": {"save_every": 2, "dtype": "float32"},
        "sample": {
            "sample_every": 2,
            "width": 32,
            "height": 32,
            "num_frames": 5,
            "sample_steps": 2,
            "seed": 11,
            "samples": [{"prompt": "a ball", "ctrl_img": str(ctrl)}],
        },
        "logging": {"tensorboard": True},
    }
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job, sort_keys=False))
    assert run_training(config) == 0
    run = tmp_path / "out" / "job"

    reference = json.loads((run / "motion_reference.json").read_text())
    assert reference["clips"] == 2 and reference["fps"] == 16 and reference["stats"]["coarse"] > 0
    for step in (0, 2, 4):
        side = json.loads((run / "samples" / f"{step:09d}_00.json").read_text())
        motion = side["motion"]
        assert motion["sha256"] == file_digest(run / "samples" / f"{step:09d}_00.mp4")
        assert motion["intervals"] == 4 and motion["fps"] == 16 and motion["coarse"] >= 0

    rows = read_metrics(run / "metrics_job.jsonl")
    schema = json.loads(resources.files("cadence.metrics").joinpath("metrics_line.schema.json").read_text())
    for row in rows:
        jsonschema.validate(row, schema)
    carried = {r["step"]: r for r in rows if "sample_motion_step" in r}
    # samples are written after their step's line: the next line carries them (the last step's have no line)
    assert {s: r["sample_motion_step"] for s, r in carried.items()} == {1: 0, 3: 2}
    side = json.loads((run / "samples" / f"{2:09d}_00.json").read_text())["motion"]
    assert carried[3]["sample_motion_coarse"] == pytest.approx(side["coarse"])
    assert carried[3]["sample_motion_reference"] == pytest.approx(reference["stats"]["coarse"])
    assert carried[3]["sample_motion_of_peak"] == pytest.approx(1.0)
    assert carried[1]["sample_motion_of_peak"] is None  # step 0 is the base model, not the LoRA's peak

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("sample_motion_coarse")] == [1, 3]
