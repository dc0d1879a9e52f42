"""The training loop with batch size > 1 over mixed buckets and windows (and gradient accumulation), and a
musubi-tuner dataset TOML training the tiny model end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from cadence.config.loader import load_config_dict
from cadence.train.loop import Trainer
from cadence.train.runner import run_training
from cadence.train.setup import build_training

from .conftest import job_dict, write_job


@pytest.mark.slow
def test_batches_of_two_over_mixed_buckets_windows_and_accumulation(
    tiny_i2v: Path, clips: Path, tmp_path: Path
) -> None:
    job = job_dict(
        tiny_i2v,
        clips,
        tmp_path / "run",
        steps=8,
        batch_size=2,
        gradient_accumulation=2,
        switch_boundary_every=1,
    )
    job["datasets"][0].update(frame_extraction="chunk", num_frames=[5, 9], cache_latents_to_disk=False)
    setup = build_training(load_config_dict(job, tmp_path / "job.yaml"))
    items = setup.batches.items
    assert {it.extraction for it in items} == {"chunk", "image"}
    assert len({it.bucket for it in items}) >= 4  # landscape/portrait clips x 5/9 frames, images
    seen: list[tuple[list[tuple[int, int, int]], tuple[int, ...], tuple[int, ...]]] = []
    assemble = setup.batches.assemble

    def recording(indices: list[int], rng):  # observes the real assembler's batches
        batch = assemble(indices, rng)
        seen.append(
            (
                [items[i].bucket for i in indices],
                tuple(batch.latents.shape),
                tuple(batch.cond["condition"].shape),
            )
        )
        return batch

    setup.batches.assemble = recording
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in setup.networks.items()}
    assert Trainer(setup).run() == 0

    assert len(seen) == 8 * 2  # steps x gradient_accumulation micro-batches
    for buckets, latents, condition in seen:
        width, height, frames = buckets[0]
        assert all(b == buckets[0] for b in buckets), buckets  # one bucket per batch
        assert latents[0] == len(buckets) <= 2 and condition[0] == latents[0]
        assert latents[2:] == ((frames - 1) // 4 + 1, height // 8, width // 8)
    assert any(len(buckets) == 2 for buckets, _, _ in seen)
    assert len({b[0][0][2] for b in seen}) >= 2 and len({b[0][0][:2] for b in seen}) >= 2
    for name, net in setup.networks.items():  # each expert: 4 optimizer steps from 8 micro-batches
        params = list(net.parameters())
        assert any(not p.equal(q) for p, q in zip(params, before[name], strict=True)), name
        steps = {int(setup.optimizer.state[p]["step"]) for p in params if p in setup.optimizer.state}
        assert steps == {4}, (name, steps)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "job" / "metrics_job.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.slow
def test_a_musubi_dataset_toml_trains_the_tiny_model(tiny_i2v: Path, clips: Path, tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_text(
        f"""
[general]
resolution = [64, 64]
caption_extension = ".txt"
batch_size = 2
enable_bucket = true
bucket_no_upscale = true

[[datasets]]
video_directory = "{clips}"
cache_directory = "cache"
target_frames = [5, 9]
frame_extraction = "slide"
frame_stride = 4

[[datasets]]
image_directory = "{clips}"
cache_directory = "cache_images"
"""
    )
    job = job_dict(tiny_i2v, clips, tmp_path / "run", steps=2)
    job["datasets"] = "dataset.toml"
    del job["train"]["batch_size"]
    config = write_job(tmp_path / "job.yaml", job)
    assert run_training(config) == 0
    run = tmp_path / "run" / "job"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    videos, images = resolved["datasets"]
    assert (videos["frame_extraction"], videos["frame_stride"], videos["num_frames"]) == ("slide", 4, [5, 9])
    assert (
        videos["media"] == "videos" and images["media"] == "images" and resolved["train"]["batch_size"] == 2
    )
    log = (run / "log.txt").read_text()
    assert "slide windows" in log and "2 images" in log, log
    assert list((tmp_path / "cache" / "wan22_14b_i2v").iterdir())  # entries where cache_directory says
    assert len((run / "metrics_job.jsonl").read_text().splitlines()) == 2
