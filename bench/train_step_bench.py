"""Trainer overhead: median full trainer step vs. a bare forward+backward+optimizer step.

Both run in this process on the same model (a ~1M-parameter Wan 2.2 I2V transformer per expert written as a
real Diffusers folder), the same 33-frame 256x256 clip, batch size and dtype. The full step is measured from
consecutive metrics-line timestamps, so it includes data loading from the cache, metrics (trend windows,
gradient stability), the JSONL write, TensorBoard and the progress bar. Goal: ratio <= 1.05.

Adapter types (`--types`, default lokr,loha,locon,dora): on the same expert, clip and bare step, each type's
step time and trainable parameter count against LoRA at equal rank (16), as ratios. Steps are interleaved
(LoRA, type, LoRA, type, ...), and the median of the per-pair ratios is reported. LoCon adds the Conv3d
patch embedding to the block Linears; LoKr is low-rank (lokr_full_rank: false) at the same rank.

    .venv/bin/python bench/train_step_bench.py [--steps 40] [--types lokr,loha,locon,dora] [--type-steps 12]
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


TYPE_NETWORKS = {
    "lora": {"linear": 16, "linear_alpha": 16},
    "lokr": {"type": "lokr", "lokr_full_rank": False, "linear": 16, "linear_alpha": 16},
    "loha": {"type": "loha", "linear": 16, "linear_alpha": 16},
    "locon": {"type": "locon", "linear": 16, "network_kwargs": {"include_patterns": ["patch_embedding"]}},
    "dora": {"type": "dora", "linear": 16, "linear_alpha": 16},
}


def adapter_type_ratios(setup, types: list[str], steps: int, warm: int = 2) -> dict[str, tuple[float, float]]:
    """{type: (median step-time ratio vs LoRA, trainable-parameter ratio vs LoRA)}, interleaved pairs."""
    from cadence.config.schema import NetworkConfig
    from cadence.networks.lora import LoRANetwork

    expert = "high_noise"
    transformer = setup.adapter.transformer(expert)
    setup.networks[expert].remove()  # the trainer's own adapter off: each type runs alone
    nets = {
        kind: LoRANetwork(transformer, NetworkConfig(**TYPE_NETWORKS[kind]), name=expert, seed=1)
        for kind in ["lora", *types]
    }
    params = {kind: sum(p.numel() for p in net.parameters()) for kind, net in nets.items()}
    spec = setup.expert_specs[expert]
    batch = setup.batches.assemble([0], None).to(setup.device, setup.dtype)
    generator = torch.Generator().manual_seed(0)
    optimizers = {kind: torch.optim.AdamW(net.parameters(), lr=1e-4) for kind, net in nets.items()}

    def one_step(kind: str) -> float:
        net = nets[kind].apply()
        started = time.perf_counter()
        noise = torch.randn(batch.latents.shape, generator=generator)
        t = torch.rand(1, generator=generator) * (spec.t_high - spec.t_low) + spec.t_low
        prediction = setup.adapter.predict(
            expert, noisy_latents(batch.latents, noise, t), t, batch.text, batch.cond
        )
        flow_matching_loss(prediction, velocity_target(batch.latents, noise)).backward()
        optimizers[kind].step()
        optimizers[kind].zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        net.remove()
        return elapsed

    ratios: dict[str, list[float]] = {kind: [] for kind in types}
    for index in range(steps + warm):
        for kind in types:
            lora, other = one_step("lora"), one_step(kind)
            if index >= warm:
                ratios[kind].append(other / lora)
    return {kind: (statistics.median(ratios[kind]), params[kind] / params["lora"]) for kind in types}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--types", default="lokr,loha,locon,dora", help="adapter types vs LoRA ('' to skip)")
    parser.add_argument("--type-steps", type=int, default=12, help="interleaved pairs per adapter type")
    args = parser.parse_args()
    types = [t for t in args.types.split(",") if t]
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
        type_ratios = adapter_type_ratios(setup, types, args.type_steps) if types else {}
    print(f"transformer parameters per expert: {params:,}; clip 33 frames 256x256; batch 1; fp32; CPU")
    print(f"median full trainer step: {full * 1000:.1f} ms")
    print(f"median bare fwd+bwd+AdamW step: {bare * 1000:.1f} ms")
    print(f"ratio full/bare: {full / bare:.3f} (goal <= 1.05)")
    for kind, (time_ratio, param_ratio) in type_ratios.items():
        print(
            f"{kind} vs lora at rank 16: step time x{time_ratio:.3f} (median of {args.type_steps} interleaved "
            f"pairs), trainable parameters x{param_ratio:.3f}"
        )


if __name__ == "__main__":
    main()
