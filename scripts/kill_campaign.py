"""kill -9 campaign: train a tiny job straight through, then the same job again while killing it with
SIGKILL at random moments (many inside checkpoint writes: `save_every: 1`) and resuming, and compare.

Reports the number of kills and resumes, whether every resume succeeded, and whether the sha256 of every
final LoRA file and training-state file equals the uninterrupted run's (files are byte-reproducible, so
equal bytes mean a bit-exact resume). Usage:

    .venv/bin/python scripts/kill_campaign.py --kills 20 --steps 60 --out /tmp/kill_campaign
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _config(model: Path, data: Path, out: Path, steps: int) -> dict:
    return {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
        "network": {"type": "lora", "linear": 4, "linear_alpha": 2},
        "save": {"save_every": 1, "max_step_saves_to_keep": 3, "dtype": "float16"},
        "datasets": [
            {"folder_path": str(data), "resolution": [32], "num_frames": 5, "cache_latents_to_disk": True}
        ],
        "train": {
            "steps": steps,
            "lr": 1e-3,
            "dtype": "fp32",
            "gradient_checkpointing": False,
            "switch_boundary_every": 3,
            "disable_sampling": True,
            "seed": 7,
        },
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": {"tensorboard": False},
    }


def _digests(run: Path, step: int) -> dict[str, str]:
    files = [
        *run.glob(f"job_{step:09d}*.safetensors"),
        *(run / "training_state" / f"step_{step:09d}").iterdir(),
    ]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _train(config: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cadence.cli", "train", str(config)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the job (default 60)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill_campaign"), help="work folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    args = parser.parse_args()
    from cadence.data.synthetic import write_synthetic_dataset
    from cadence.models.tiny import write_tiny_model

    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "model"
    if not model.exists():
        write_tiny_model(model, "wan22_14b_i2v", seed=0)
    data = args.out / "clips"
    if not data.exists():
        write_synthetic_dataset(data, n_videos=3, n_images=2, width=48, height=32, num_frames=17)
    configs = {}
    for name in ("straight", "killed"):
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_config(model, data, args.out / name, args.steps)))
        configs[name] = path
    if _train(configs["straight"]).wait() != 0:
        raise SystemExit("the uninterrupted run failed")
    kills = resumes = 0
    failures: list[int] = []
    run = args.out / "killed" / "job"
    while True:
        proc = _train(configs["killed"])
        if kills < args.kills:
            time.sleep(rng.uniform(2.0, 6.0))  # model loading takes ~2 s: most kills land in training/saving
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                resumes += 1
                continue
        code = proc.wait()
        if code != 0:
            failures.append(code)
            if len(failures) > 3:
                break
            continue
        break
    same = _digests(args.out / "straight" / "job", args.steps) == _digests(run, args.steps)
    report = {"kills": kills, "resumes": resumes, "failed_resumes": failures, "final_sha256_equal": same}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0 if same and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
