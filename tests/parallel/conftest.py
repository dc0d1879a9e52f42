"""Real tiny Wan 2.2 I2V model, real square clips (every bucket holds an even number of items, so a global
batch of 2 splits into two equal rank batches), real `torchrun` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadence.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("drive.py")
# measurements of the machine, not of training
VOLATILE = {"timestamp", "step_time_s", "data_time_s", "samples_per_s", "peak_memory_gb"}


@pytest.fixture(scope="session")
def square_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 clips and 2 images, all 48x48: two buckets (5 frames, 1 frame) of 4 and 2 items."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("pdata") / "clips", n_videos=4, n_images=2, width=48, height=48, num_frames=17
    )


def job(model: Path, data: Path, out: Path, parallel: dict | None = None, **train: Any) -> dict[str, Any]:
    """A flat-layout job on the tiny model (CPU, fp32); keyword arguments override `train` keys."""
    section = {
        "steps": 6,
        "batch_size": 1,
        "lr": 1e-3,
        "dtype": "fp32",
        "gradient_checkpointing": False,
        "switch_boundary_every": 1,
        "disable_sampling": True,
        "seed": 7,
    }
    section.update(train)
    body: dict[str, Any] = {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
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
        "train": section,
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": {"tensorboard": False},
    }
    if parallel:
        body["parallel"] = parallel
    return body


def write(path: Path, body: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def torchrun_args(nproc: int = 2) -> list[str]:
    """The venv's own torchrun (no PATH lookup), on a free port, never restarting a worker."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--max_restarts=0",
    ]


def env() -> dict[str, str]:
    out = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    out["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), out.get("PYTHONPATH", "")])
    return out


def run_torchrun(configs: list[Path], log: Path, nproc: int = 2, timeout: float = 240) -> list[int]:
    """Train each config in turn inside one torchrun launch (tests/parallel/drive.py calls `cadence train`
    per config in the same worker processes); returns rank 0's exit code of each."""
    codes = log.with_suffix(".codes.json")
    cmd = [*torchrun_args(nproc), str(DRIVER), str(codes), *map(str, configs)]
    with open(log, "wb") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env(), timeout=timeout)
    assert done.returncode == 0, f"torchrun exited {done.returncode}; see {log}:\n{log.read_text()[-4000:]}"
    return json.loads(codes.read_text())


def rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics_job.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]
