"""Trainer overhead: a full trainer step against a bare forward+backward+clip+AdamW step, in interleaved pairs.

What it compares, on the same Wan 2.2 I2V expert (a real Diffusers folder, tiny dims, `--layers` blocks: 40
by default, i.e. 400 adapted Linears = 800 LoRA tensors, the Wan 14B count), the same cached clip, batch
size and dtype:
- ours: one iteration of `Trainer.run`'s loop, from one metrics line to the next: data from the cache,
  noise and timesteps from the expert's streams, forward, backward, gradient clipping, the optimizer step,
  gradient stability, the |ΔW| probe (every 25th step), the metrics line (JSONL + TensorBoard), the
  progress bar and the live checks;
- reference: the same training maths done bare, the best way torch allows: the batch already on the
  device, `torch.randn` noise, the adapter's forward, backward, `clip_grad_norm_` (foreach) and
  `torch.optim.AdamW` (foreach) on the same parameters, `zero_grad(set_to_none=True)`.
The bare step runs inside the trainer's loop, right after each metrics line is written, so the two
alternate step by step (F B F B ...). Each full step's ratio is taken against the mean of the bare steps
on either side of it; the median of those ratios and its spread are printed, and the ratio of the total
times too (the periodic |ΔW| probe counts there). Goal: median ratio <= 1.05.

Adapter types (`--types`, default lokr,loha,locon,dora): on the same expert and clip, each type's bare step
time and trainable parameter count against LoRA at equal rank (16), as the median of interleaved pairs
(LoRA, type, type, LoRA, ...). LoCon adds the Conv3d patch embedding to the block Linears; LoKr is
low-rank (lokr_full_rank: false) at the same rank. `--types ''` skips them.

    .venv/bin/python bench/train_step_bench.py [--pairs 40] [--layers 40] [--dims tiny|wide]
        [--size 64] [--frames 17] [--types lokr,loha,locon,dora] [--type-pairs 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from diffusers import WanTransformer3DModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairing import Pairs, Spread, run_pairs, seconds  # noqa: E402

from cadence.config.loader import load_config  # noqa: E402
from cadence.data.synthetic import write_synthetic_dataset  # noqa: E402
from cadence.models.tiny import write_tiny_model  # noqa: E402
from cadence.train.loop import Trainer  # noqa: E402
from cadence.train.objective import flow_matching_loss, noisy_latents, velocity_target  # noqa: E402
from cadence.train.setup import build_training  # noqa: E402

EXPERT = "high_noise"
DIMS = {
    "tiny": {},  # the tiny model's own dims (24 wide, ffn 48)
    "wide": {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512},  # ~1M params at 4 blocks
}


def resize_transformers(model_dir: Path, layers: int, dims: str) -> tuple[int, int]:
    """Rebuild both experts with `layers` blocks (and the wider dims when asked); (parameters, Linears)."""
    params = linears = 0
    for name in ("transformer", "transformer_2"):
        config = WanTransformer3DModel.load_config(model_dir / name)
        config.update(num_layers=layers, **DIMS[dims])
        torch.manual_seed(0)
        model = WanTransformer3DModel.from_config(config)
        model.save_pretrained(model_dir / name)
        params = sum(p.numel() for p in model.parameters())
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.blocks.modules())
    return params, linears


def job(root: Path, steps: int, size: int, frames: int) -> dict:
    return {
        "name": "bench",
        "training_folder": str(root / "out"),
        "device": "cpu",
        "network": {"linear": 16, "linear_alpha": 16},
        "save": {"save_every": 100000},
        "datasets": [
            {
                "folder_path": str(root / "clips"),
                "resolution": [size],
                "num_frames": frames,
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


def bare_step_fn(setup, params: list[torch.Tensor]):
    """One bare training step on the trainer's own adapter (its weights move; the trainer's do too)."""
    spec = setup.expert_specs[EXPERT]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = setup.batches.assemble([0], None).to(setup.device, setup.dtype)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        noise = torch.randn(batch.latents.shape, generator=generator)
        t = torch.rand(1, generator=generator) * (spec.t_high - spec.t_low) + spec.t_low
        noisy = noisy_latents(batch.latents, noise, t).to(setup.dtype)
        prediction = setup.adapter.predict(EXPERT, noisy, t, batch.text, batch.cond)
        flow_matching_loss(prediction, velocity_target(batch.latents, noise)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class Interleaved:
    """Runs a bare step after every metrics line the trainer writes and times both sides."""

    def __init__(self, setup, bare) -> None:
        self.full: list[float] = []
        self.bare: list[float] = []
        self._mark: float | None = None
        write = setup.recorder.write

        def timed_write(row: dict) -> None:  # this bench's own recorder instance, not a library global
            write(row)
            if self._mark is not None:
                self.full.append(time.perf_counter() - self._mark)
            self.bare.append(seconds(bare))
            self._mark = time.perf_counter()

        setup.recorder.write = timed_write

    def pairs(self, warm: int) -> Pairs:
        """Full step k (between bare steps k-1 and k) against the mean of those two bare steps."""
        full, bare = self.full[warm:], self.bare[warm:]
        neighbours = [(a + b) / 2 for a, b in zip(bare, bare[1:], strict=False)]
        return Pairs(full[: len(neighbours)], neighbours)


TYPE_NETWORKS = {
    "lora": {"linear": 16, "linear_alpha": 16},
    "lokr": {"type": "lokr", "lokr_full_rank": False, "linear": 16, "linear_alpha": 16},
    "loha": {"type": "loha", "linear": 16, "linear_alpha": 16},
    "locon": {"type": "locon", "linear": 16, "network_kwargs": {"include_patterns": ["patch_embedding"]}},
    "dora": {"type": "dora", "linear": 16, "linear_alpha": 16},
}


def adapter_type_ratios(setup, types: list[str], pairs: int) -> dict[str, tuple[Spread, float]]:
    """{type: (step-time ratio vs LoRA over interleaved pairs, trainable-parameter ratio vs LoRA)}."""
    from cadence.config.schema import NetworkConfig
    from cadence.networks.lora import LoRANetwork

    transformer = setup.adapter.transformer(EXPERT)
    setup.networks[EXPERT].remove()  # the trainer's own adapter off: each type runs alone
    nets = {
        kind: LoRANetwork(transformer, NetworkConfig(**TYPE_NETWORKS[kind]), name=EXPERT, seed=1)
        for kind in ["lora", *types]
    }
    params = {kind: sum(p.numel() for p in net.parameters()) for kind, net in nets.items()}
    steps = {}
    for kind, net in nets.items():
        net.apply()
        steps[kind] = bare_step_fn(setup, [p for p in net.parameters() if p.requires_grad])
        net.remove()

    def runner(kind: str):
        def run() -> None:
            nets[kind].apply()
            try:
                steps[kind]()
            finally:
                nets[kind].remove()

        return run

    return {
        kind: (
            run_pairs(runner(kind), runner("lora"), pairs, warmup=2).time_ratio(),
            params[kind] / params["lora"],
        )
        for kind in types
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=40, help="full/bare step pairs measured (after --warm)")
    parser.add_argument("--warm", type=int, default=5, help="steps left out at the start")
    parser.add_argument(
        "--layers", type=int, default=40, help="transformer blocks per expert (10 Linears each)"
    )
    parser.add_argument("--dims", choices=sorted(DIMS), default="tiny")
    parser.add_argument("--size", type=int, default=64, help="clip width and height (pixels)")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--types", default="lokr,loha,locon,dora", help="adapter types vs LoRA ('' to skip)")
    parser.add_argument("--type-pairs", type=int, default=12, help="interleaved pairs per adapter type")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    types = [t for t in args.types.split(",") if t]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tiny_model(root / "model", "wan22_14b_i2v")
        params, linears = resize_transformers(root / "model", args.layers, args.dims)
        write_synthetic_dataset(
            root / "clips", n_videos=2, n_images=0, width=args.size, height=args.size, num_frames=args.frames
        )
        config = root / "bench.yaml"
        config.write_text(yaml.safe_dump(job(root, args.warm + args.pairs + 2, args.size, args.frames)))
        setup = build_training(load_config(config))
        trainable = [p for p in setup.networks[EXPERT].parameters() if p.requires_grad]
        timing = Interleaved(setup, bare_step_fn(setup, trainable))
        Trainer(setup).run()
        pairs = timing.pairs(args.warm)
        type_ratios = adapter_type_ratios(setup, types, args.type_pairs) if types else {}
    full_ms, bare_ms = pairs.median_ms()
    out = sys.stdout.write
    out(
        f"expert: {params:,} parameters, {args.layers} blocks, {linears} adapted Linears = {len(trainable)} "
        f"LoRA tensors (rank 16); clip {args.frames} frames {args.size}x{args.size}; batch 1; fp32; CPU "
        f"({torch.get_num_threads()} threads)\n"
    )
    out(
        f"median full trainer step: {full_ms:.2f} ms; median bare fwd+bwd+clip+AdamW step: {bare_ms:.2f} ms\n"
    )
    out(f"full / bare per pair: {pairs.time_ratio().text()} (goal median <= 1.05)\n")
    out(
        f"full / bare over all pairs (total time, the periodic |ΔW| probe included): "
        f"{sum(pairs.ours) / sum(pairs.reference):.3f}\n"
    )
    for kind, (spread, param_ratio) in type_ratios.items():
        out(
            f"{kind} vs lora at rank 16: bare step time x{spread.text()}, trainable parameters x{param_ratio:.3f}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
