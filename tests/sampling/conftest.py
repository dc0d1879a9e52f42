"""Tiny real Wan models, a control image and a small job config for the sampling tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from cadence.config.loader import load_config
from cadence.models.registry import load_model_adapter
from cadence.networks.lora import LoRANetwork


@pytest.fixture(scope="session")
def tiny_5b(tiny_models) -> Path:
    return tiny_models("wan22_5b")


@pytest.fixture(scope="session")
def ctrl_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40x32 image with structure (not square: the sampler crops it to the sample size)."""
    path = tmp_path_factory.mktemp("img") / "first.png"
    gen = torch.Generator().manual_seed(3)
    pixels = (torch.rand(32, 40, 3, generator=gen) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def sample_job(model: Path, out: Path, arch: str = "wan22_14b_i2v", **sample: Any) -> dict[str, Any]:
    """A flat-layout job with sampling on: 32x32, 5 frames, 2 steps."""
    section: dict[str, Any] = {
        "sample_every": 4,
        "width": 32,
        "height": 32,
        "num_frames": 5,
        "sample_steps": 2,
        "guidance_scale": 3.0,
        "neg": "blurry",
        "seed": 11,
        "walk_seed": True,
    }
    section.update(sample)
    return {
        "name": "job",
        "training_folder": str(out),
        "device": "cpu",
        "trigger_word": "sks",
        "network": {"type": "lora", "linear": 4, "linear_alpha": 2},
        "train": {"dtype": "fp32", "disable_sampling": False},
        "model": {"name_or_path": str(model), "arch": arch},
        "sample": section,
    }


def write_job(path: Path, job: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def random_networks(adapter, cfg, seed: int = 5) -> dict[str, LoRANetwork]:
    """One network per expert with non-zero up weights, so the adapters visibly change samples."""
    networks = {}
    for offset, spec in enumerate(adapter.experts):
        net = LoRANetwork(adapter.transformer(spec.name), cfg.network, name=spec.name, seed=seed + offset)
        gen = torch.Generator().manual_seed(seed + 100 + offset)
        with torch.no_grad():
            for module in net.modules_by_name.values():
                module.up.copy_(torch.randn(module.up.shape, generator=gen) * 0.5)
        networks[spec.name] = net.apply()
    return networks


@pytest.fixture
def loaded(tiny_i2v: Path, ctrl_png: Path, tmp_path: Path):
    """(cfg, adapter, networks) for an I2V job with two samples."""
    job = sample_job(
        tiny_i2v,
        tmp_path / "runs",
        samples=[
            {"prompt": "a [trigger] cat", "ctrl_img": str(ctrl_png)},
            {"prompt": "a dog", "ctrl_img": str(ctrl_png), "network_multiplier": 0.5, "seed": 99},
        ],
    )
    cfg = load_config(write_job(tmp_path / "job.yaml", job))
    adapter = load_model_adapter(cfg.model, torch.device("cpu"), torch.float32)
    return cfg, adapter, random_networks(adapter, cfg)
