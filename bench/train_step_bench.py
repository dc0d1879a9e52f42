"""Trainer overhead: median full trainer step vs. a bare forward+backward+optimizer step.

Both run in this process on the same model (a ~1M-parameter Wan 2.2 I2V transformer per expert written as a
real Diffusers folder), the same 33-frame 256x256 clip, batch size and dtype. The full step is measured from
consecutive metrics-line timestamps, so it includes data loading from the cache, metrics (trend windows,
gradient stability), the JSONL write, TensorBoard and the progress bar. Goal: ratio <= 1.05.

    .venv/bin/python bench/train_step_bench.py [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml
from diffusers import WanTransformer3DModel

from cadence.config.loader import load_config
from cadence.data.synthetic import write_synthetic_dataset
from cadence.metrics.jsonl import read_metrics
from cadence.models.tiny import write_tiny_model
from cadence.train.loop import Trainer
from cadence.train.objective import flow_matching_loss, noisy_latents, velocity_target
from cadence.train.setup import build_training


def widen_transformers(model_dir: Path) -> int:
    """Replace the tiny experts by ~1M-parameter ones (same text/latent interfaces)."""
    params = 0
    for name in ("transformer", "transformer_2"):
        config = WanTransformer3DModel.load_config(model_dir / name)
        config.update(num_attention_heads=4, attention_head_dim=32, ffn_dim=512, num_layers=4)
        torch.manual_seed(0)
        model = WanTransformer3DModel.from_config(config)
        model.save_pretrained(model_dir / name)
        params = sum(p.numel() for p in model.parameters())
    return params


def job(root: Path, steps: int) -> dict:
    return {
        "name": "bench",
        "training_folder": str(root / "out"),
        "device": "cpu",
        "network": {"linear": 16, "linear_alpha": 16},
        "save": {"save_every": 100000},
        "datasets": [
            {
                "folder_path": str(root / "clips"),
                "resolution": [256],
                "num_frames": 33,
                "cache_latents_to_disk": True,
                "cache_latents": True,
            }
        ],
        "train": {
            "steps": steps,
            "lr": 1e-4,
            "dtype": "fp32",
            "gradient_checkpointing": False,
            "switch_boundary_every": 1000,
            "disable_sampling": True,
        },
        "model": {
            "name_or_path": str(root / "model"),
            "arch": "wan22_14b_i2v",
            "model_kwargs": {"train_low_noise": False},
        },
        "logging": {"tensorboard": True},
    }


def full_step_times(rows: list[dict]) -> list[float]:
    stamps = [datetime.fromisoformat(row["timestamp"]) for row in rows]
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]


def bare_step_times(setup, steps: int) -> list[float]:
    expert = "high_noise"
    spec = setup.expert_specs[expert]
    params = [p for p in setup.networks[expert].parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = setup.batches.assemble([0], None).to(setup.device, setup.dtype)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        noise = torch.randn(batch.latents.shape, generator=generator)
        t = torch.rand(1, generator=generator) * (spec.t_high - spec.t_low) + spec.t_low
        prediction = setup.adapter.predict(
            expert, noisy_latents(batch.latents, noise, t), t, batch.text, batch.cond
        )
        loss = flow_matching_loss(prediction, velocity_target(batch.latents, noise))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tiny_model(root / "model", "wan22_14b_i2v")
        params = widen_transformers(root / "model")
        write_synthetic_dataset(root / "clips", n_videos=2, n_images=0, width=256, height=256, num_frames=33)
        config = root / "bench.yaml"
        config.write_text(yaml.safe_dump(job(root, args.steps)))
        setup = build_training(load_config(config))
        Trainer(setup).run()
        rows = read_metrics(setup.paths.metrics)
        warm = 5
        full = statistics.median(full_step_times(rows)[warm:])
        bare = statistics.median(bare_step_times(setup, args.steps)[warm:])
    print(f"transformer parameters per expert: {params:,}; clip 33 frames 256x256; batch 1; fp32; CPU")
    print(f"median full trainer step: {full * 1000:.1f} ms")
    print(f"median bare fwd+bwd+AdamW step: {bare * 1000:.1f} ms")
    print(f"ratio full/bare: {full / bare:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
