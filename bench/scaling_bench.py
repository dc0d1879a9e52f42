"""What several ranks buy and what the distributed code path costs (cadence.parallel, docs/distributed.md).

Mode `scaling` (CPU, gloo): the tiny Wan 2.2 I2V model trained by one process and by two torchrun ranks,
each with the same per-rank batch, in interleaved pairs of whole runs. Per run the median optimizer-step
time of its metrics lines (the first steps left out) is taken; per pair the ratio of steps/s (2 ranks over
1) and of samples/s (2 ranks train twice the rows per step); the medians of the pair ratios are printed.
On a machine whose cores are shared with other work the samples/s ratio is the scaling there, not a promise.

Mode `overhead` (a GPU when there is one, else the CPU): one process, the plain path (`ParallelContext`)
against the distributed path on a world of one (`DistributedContext` over a one-rank process group: the
gradient all-reduce, the ranks' mean of the loss and the three stop/save agreements of every step), two
setups of the same job built side by side, their steps interleaved. Prints time(distributed)/time(plain).
The tiny model's step lasts milliseconds, so fixed costs weigh more here than on a real expert.

    python bench/scaling_bench.py scaling [--pairs 3 --steps 30]
    python bench/scaling_bench.py overhead [--pairs 40] [--device cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pairing import Pairs, Spread, ratio_line, run_pairs  # noqa: E402

SKIP_STEPS = 3  # process start, caches and the first steps' allocations are not the steady state


def _job(model: Path, data: Path, out: Path, steps: int, device: str, batch: int = 1) -> dict:
    return {
        "name": "job",
        "training_folder": str(out),
        "device": device,
        "network": {"type": "lora", "linear": 8, "linear_alpha": 8},
        "save": {"save_every": 100_000, "max_step_saves_to_keep": 1, "dtype": "float32"},
        "datasets": [
            {"folder_path": str(data), "resolution": [48], "num_frames": 9, "cache_latents_to_disk": True}
        ],
        "train": {
            "steps": steps,
            "batch_size": batch,
            "lr": 1e-4,
            "dtype": "fp32",
            "switch_boundary_every": 1,
            "disable_sampling": True,
            "gradient_checkpointing": False,
        },
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": {"tensorboard": False},
    }


def _inputs(root: Path) -> tuple[Path, Path]:
    from cadence.data.synthetic import write_synthetic_dataset
    from cadence.models.tiny import write_tiny_model

    model = write_tiny_model(root / "model", "wan22_14b_i2v", seed=0)
    data = write_synthetic_dataset(root / "clips", n_videos=8, n_images=0, width=64, height=64, num_frames=17)
    return model, data


def _median_step(run_dir: Path) -> float:
    lines = (run_dir / "metrics_job.jsonl").read_text().splitlines()
    return statistics.median(json.loads(line)["step_time_s"] for line in lines[SKIP_STEPS:])


def _train(config: Path, ranks: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd = (
        [*launcher, "-m", "cadence", "train", str(config)]
        if ranks > 1
        else [sys.executable, "-m", "cadence", "train", str(config)]
    )
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _median_step(config.parent / "job")


def scaling(pairs: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = _inputs(root)
        one: list[float] = []
        two: list[float] = []
        for index in range(pairs):
            runs = {}
            for ranks in (1, 2) if index % 2 == 0 else (2, 1):
                out = root / f"pair{index}_{ranks}"
                config = out / "job.yaml"
                out.mkdir(parents=True)
                config.write_text(yaml.safe_dump(_job(model, data, out, steps, "cpu")))
                runs[ranks] = _train(config, ranks)
            one.append(runs[1])
            two.append(runs[2])
        steps_ratio = Pairs(two, one).speed_ratio()  # steps/s of 2 ranks over 1
        rows_ratio = Spread.of([2 * a / b for a, b in zip(one, two, strict=True)])
        print(
            f"step time: 1 rank {statistics.median(one) * 1e3:.1f} ms, 2 ranks {statistics.median(two) * 1e3:.1f} ms"
        )
        print(f"steps/s 2 ranks / 1 rank (batch 1 per rank): {steps_ratio.text()}")
        print(f"samples/s 2 ranks / 1 rank: {rows_ratio.text()} (ideal 2.0; {os.cpu_count()} CPU cores here)")


def _setup(model: Path, data: Path, out: Path, device: str, parallel):
    from cadence.config.loader import load_config_dict
    from cadence.train.setup import build_training

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config_dict(_job(model, data, out, 100_000, device), out / "job.yaml")
    return build_training(cfg, parallel)


def _step(trainer, counter: list[int]) -> None:
    """One step as the loop runs it: the round, the bookkeeping and the three agreements."""
    s = trainer.s
    counter[0] += 1
    plan = s.parallel.round_steps(counter[0], 10**9, s.router)
    results = trainer._train_round(plan)
    for step, _ in plan:
        trainer._after_update(results[step])
        trainer.metrics_row(step, results[step])
    s.parallel.any(False, False)
    s.parallel.any(False)
    s.parallel.any(False, False)
    if s.device.type == "cuda":
        import torch

        torch.cuda.synchronize(s.device)


def overhead(pairs: int, device: str, json_out: str | None) -> None:
    import torch
    import torch.distributed as dist

    from cadence.parallel.context import ParallelContext
    from cadence.parallel.distributed import DistributedContext
    from cadence.parallel.groups import plan_groups
    from cadence.parallel.world import World
    from cadence.train.loop import Trainer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = _inputs(root)
        dev = torch.device(device)
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
        )
        world = World(0, 1, 0, 1)
        distributed = DistributedContext(
            world, plan_groups(1, ["high_noise", "low_noise"], False), dev, False, owns_group=False
        )
        plain = Trainer(_setup(model, data, root / "plain", device, ParallelContext()))
        ranked = Trainer(_setup(model, data, root / "dist", device, distributed))
        counters = ([0], [0])
        result = run_pairs(
            lambda: _step(ranked, counters[0]), lambda: _step(plain, counters[1]), pairs, warmup=4
        )
        line = ratio_line(f"one {device} step, distributed path vs plain", result)
        print(line)
        plain.s.close()
        ranked.s.close()
        dist.destroy_process_group()
        if json_out:
            spread = result.time_ratio()
            Path(json_out).write_text(
                json.dumps(
                    {
                        "device": device,
                        "ratio_median": spread.median,
                        "q1": spread.q1,
                        "q3": spread.q3,
                        "line": line,
                    }
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["scaling", "overhead"])
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=30, help="scaling: steps per run")
    parser.add_argument("--device", default="auto", help="overhead: cuda, cpu or auto")
    parser.add_argument("--json", default=None, help="overhead: write the figures here")
    args = parser.parse_args()
    if args.mode == "scaling":
        scaling(args.pairs or 3, args.steps)
    else:
        overhead(args.pairs or 40, args.device, args.json)


if __name__ == "__main__":
    main()
