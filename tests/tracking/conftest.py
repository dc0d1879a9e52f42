"""Real synthetic clips and one tracked run (4 steps, then resumed to 8) shared by the tracking tests; the
tiny model comes from tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadence.data.synthetic import write_synthetic_dataset
from cadence.train.runner import run_training

from .servers import LocalHub, WebhookReceiver

HF_TOKEN = "hf_SECRETtoken0123456789"
HOOK_SECRET = "SECRET-hook-path-42"


@pytest.fixture(scope="session")
def tracking_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("tracking_data") / "clips",
        n_videos=2,
        n_images=1,
        width=48,
        height=32,
        num_frames=17,
    )


def tracked_job(model: Path, data: Path, out: Path, steps: int, logging: dict[str, Any], **save: Any) -> dict:
    """A flat-layout job on the tiny Wan 2.2 I2V model: two experts in 2-step turns, a checkpoint and a
    sample every 4 steps, an alpha schedule that changes phase, and a health rule that warns."""
    open_exit = {"loss_improvement_rate_below": None, "min_gradient_stability": None, "min_loss_r2": None}
    phases = {
        "foundation": {
            "alpha": 2,
            "min_steps": 2,
            "exit_criteria": {**open_exit, "advisory": ["max_loss_cv"]},
        },
        "emphasis": {"alpha": 4, "min_steps": 0},
    }
    return {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
        "trigger_word": "sks",
        "network": {
            "type": "lora",
            "linear": 4,
            "linear_alpha": 2,
            "alpha_schedule": {"enabled": True, "window": 20, "alpha_phases": phases},
        },
        "save": {"save_every": 4, "max_step_saves_to_keep": 10, "dtype": "float32", **save},
        "datasets": [{"folder_path": str(data), "resolution": [32], "num_frames": 5}],
        "train": {
            "steps": steps,
            "lr": 1e-3,
            "dtype": "fp32",
            "gradient_checkpointing": False,
            "switch_boundary_every": 2,
            "seed": 7,
            # every balanced checkpoint "outgrows" this bound: a live health warning at steps 4, 8, ...
            "health": {"thresholds": {"weight_ratio_high": 0.01}},
        },
        "sample": {
            "sample_every": 4,
            "skip_first_sample": True,
            "width": 32,
            "height": 32,
            "num_frames": 5,
            "sample_steps": 2,
            "samples": [{"prompt": "a [trigger] cat", "ctrl_img": str(data / "image_00.png")}],
        },
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": logging,
    }


@dataclass
class Runs:
    run_dir: Path
    hub: LocalHub
    receiver: WebhookReceiver
    first: subprocess.CompletedProcess
    first_events: list[dict]  # raw webhook bodies of the first run
    second_rc: int
    second_log: str


def _logging(receiver: WebhookReceiver) -> dict:
    return {
        "tensorboard": True,
        "use_wandb": True,
        "project_name": "cadence-tests",
        "run_name": "tracked",
        "webhooks": [
            {"webhook_type": "raw", "callback_url": f"{receiver.url}/raw/{HOOK_SECRET}"},
            {"webhook_type": "discord", "webhook_url": f"{receiver.url}/discord/{HOOK_SECRET}"},
        ],
    }


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_i2v: Path, tracking_clips: Path):
    """4 steps in a `cadence train` process that publishes to the local Hub, then a resume to 8 steps in
    this process, where the Hub refuses the upload (the failure path)."""
    tmp = tmp_path_factory.mktemp("tracked")
    hub, receiver, denying = LocalHub(fail_commits=1), WebhookReceiver(), LocalHub(deny=True)
    save = {"push_to_hub": True, "hf_repo_id": "someone/tracked-lora", "hf_private": True}
    config = tmp / "job.yaml"

    def write(steps: int) -> None:
        job = tracked_job(tiny_i2v, tracking_clips, tmp / "out", steps, _logging(receiver), **save)
        config.write_text(yaml.safe_dump(job, sort_keys=False))

    write(4)
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": HF_TOKEN,
    }
    first = subprocess.run(
        [sys.executable, "-m", "cadence.cli", "train", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    first_events = [r.json() for r in receiver.posts(f"/raw/{HOOK_SECRET}")]
    write(8)
    run_dir = tmp / "out" / "job"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**env, "HF_ENDPOINT": denying.url}.items():
            if key.startswith(("WANDB_", "HF_")):
                patch.setenv(key, value)
        second_rc = run_training(config)
    yield Runs(run_dir, hub, receiver, first, first_events, second_rc, (run_dir / "log.txt").read_text())
    for server in (hub, receiver, denying):
        server.close()
