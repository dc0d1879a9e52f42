"""Samples from LoKr, LoHa and DoRA files (`cadence sample --lora`) equal the in-training samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cadence.config.loader import load_config
from cadence.models.registry import load_model_adapter
from cadence.networks import LoRANetwork, save_lora_file
from cadence.sampling import TrainingSampler
from cadence.sampling.command import sample_command

from .conftest import sample_job, write_job
from .test_sample_command import _parse

NETWORKS = {
    "lokr": {"type": "lokr", "lokr_full_rank": False, "linear": 2, "linear_alpha": 3},
    "loha": {"type": "loha", "linear": 2, "linear_alpha": 1},
    "dora": {"type": "dora", "linear": 2},
}


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_cli_sample_of_the_file_equals_the_training_sample(kind, tiny_5b, tmp_path, capsys) -> None:
    job = sample_job(tiny_5b, tmp_path / "runs", arch="wan22_5b", prompts=["waves"])
    job["network"] = NETWORKS[kind]
    config = write_job(tmp_path / "job.yaml", job)
    cfg = load_config(config)
    adapter = load_model_adapter(cfg.model, torch.device("cpu"), torch.float32)
    net = LoRANetwork(adapter.transformer("main"), cfg.network, name="main", seed=5)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    trained = TrainingSampler(cfg, adapter, {"main": net.apply()}, tmp_path / "train").run(3)
    path = tmp_path / "job_000000003.safetensors"
    save_lora_file(path, net.to_lora_tensors(), {"step": "3"}, "comfyui", torch.float32)
    assert sample_command(_parse([str(config), "--lora", str(path), "--out", str(tmp_path / "cli")])) == 0
    capsys.readouterr()
    cli = np.asarray(Image.open(tmp_path / "cli" / "000000003_00.png"))
    assert np.array_equal(cli, np.asarray(Image.open(trained[2])))
