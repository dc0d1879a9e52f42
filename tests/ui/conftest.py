"""Real tiny Wan 2.2 I2V model, real synthetic clips, real app over a real SQLite file in tmp."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from cadence.data.synthetic import write_synthetic_dataset
from cadence.models.tiny import write_tiny_model
from cadence.ui.app import create_app

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny_wan22_i2v", "wan22_14b_i2v", seed=0)


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("data") / "clips", n_videos=2, n_images=2, width=96, height=64, num_frames=17
    )


def job_config(
    name: str, model: Path, data: Path, out: Path, steps: int = 400, save_every: int = 1000
) -> dict:
    """A flat-layout config for the tiny model on CPU (fp32, no sampling, latents cached on disk)."""
    return {
        "name": name,
        "training_folder": str(out),
        "device": "cpu",
        "network": {"type": "lora", "linear": 4, "linear_alpha": 2},
        "save": {"save_every": save_every, "max_step_saves_to_keep": 3, "dtype": "float32"},
        "datasets": [
            {"folder_path": str(data), "resolution": [64], "num_frames": 5, "cache_latents_to_disk": True}
        ],
        "train": {
            "steps": steps,
            "lr": 1e-3,
            "dtype": "fp32",
            "gradient_checkpointing": False,
            "disable_sampling": True,
            "seed": 3,
        },
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "logging": {"tensorboard": False},
    }


def config_yaml(**kwargs: Any) -> str:
    return yaml.safe_dump(job_config(**kwargs), sort_keys=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_client(home: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory for clients over the same home (a second call = a restarted UI); all are closed at the end."""
    clients: list[TestClient] = []

    def make(token: str | None = None, stop_timeout: float = 60.0) -> TestClient:
        app = create_app(home, token=token, stop_timeout=stop_timeout, scheduler_interval=0.3, gpus=[])
        client = TestClient(app, base_url="http://localhost")  # the Host a local browser sends
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    _kill_leftovers(home)


def _kill_leftovers(home: Path) -> None:
    """Never leave a training process behind a failed test."""
    from cadence.ui.store import JobStore

    db = home / "cadence.db"
    if not db.exists():
        return
    for job in JobStore(db).list(("running", "stopping")):
        if job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
