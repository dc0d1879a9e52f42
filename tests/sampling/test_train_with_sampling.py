"""`cadence train` with sampling on and the text encoder unloaded (the example config's combination)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.data.synthetic import write_synthetic_dataset
from cadence.train.runner import run_training

from .conftest import sample_job, write_job


@pytest.mark.slow
def test_samples_come_from_the_text_cache_training_filled(
    tiny_i2v: Path, ctrl_png: Path, tmp_path: Path
) -> None:
    data = write_synthetic_dataset(
        tmp_path / "clips", n_videos=2, n_images=0, width=48, height=32, num_frames=9
    )
    job = sample_job(
        tiny_i2v,
        tmp_path / "out",
        sample_every=2,
        samples=[{"prompt": "a [trigger] walking", "ctrl_img": str(ctrl_png)}],
    )
    job["datasets"] = [{"folder_path": str(data), "resolution": [32], "num_frames": 5}]
    job["train"].update(steps=2, lr=1e-3, cache_text_embeddings=True, gradient_checkpointing=False)
    job["save"] = {"save_every": 2, "dtype": "float32"}
    job["logging"] = {"tensorboard": False}
    assert run_training(write_job(tmp_path / "job.yaml", job)) == 0
    samples = sorted(p.name for p in (tmp_path / "out" / "job" / "samples").glob("*.mp4"))
    assert len(samples) == 2 and "000000000" in samples[0] and "000000002" in samples[1]


@pytest.mark.slow
def test_with_ema_the_training_sample_is_the_saved_files_sample(
    tiny_i2v: Path, ctrl_png: Path, tmp_path: Path
) -> None:
    """ai-toolkit samples with the EMA weights and saves them: the in-training sample at a checkpoint equals
    `cadence sample` on that checkpoint's files (the EMA), not one of the raw weights."""
    import numpy as np
    from PIL import Image

    from cadence.sampling.command import sample_command

    from .test_sample_command import _parse

    data = write_synthetic_dataset(
        tmp_path / "clips", n_videos=2, n_images=0, width=48, height=32, num_frames=9
    )
    job = sample_job(
        tiny_i2v,
        tmp_path / "out",
        sample_every=4,
        samples=[{"prompt": "a [trigger] cat", "ctrl_img": str(ctrl_png)}],
    )
    job["datasets"] = [{"folder_path": str(data), "resolution": [32], "num_frames": 5}]
    job["train"].update(steps=4, lr=5e-2, gradient_checkpointing=False, switch_boundary_every=2)
    job["train"]["ema_config"] = {"use_ema": True, "ema_decay": 0.5}
    job["save"] = {"save_every": 4, "dtype": "float32"}
    job["logging"] = {"tensorboard": False}
    config = write_job(tmp_path / "job.yaml", job)
    assert run_training(config) == 0
    run = tmp_path / "out" / "job"
    argv = [str(config), "--out", str(tmp_path / "cli")]
    for expert in ("high", "low"):
        argv += [f"--lora-{expert}", str(run / f"job_000000004_{expert}_noise.safetensors")]
    assert sample_command(_parse(argv)) == 0
    trained = np.asarray(Image.open(run / "samples" / "000000004_00.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli" / "000000004_00.png")), trained)
