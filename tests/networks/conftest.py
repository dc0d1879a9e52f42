"""Fixtures for the LoRA network/format tests: tiny real diffusers Wan transformers and pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.models.tiny import build_tiny_pipeline, write_tiny_model


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory):
    """arch -> Diffusers folder with tiny random weights, written at most once per session."""
    root = tmp_path_factory.mktemp("tiny_lora_models")
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = write_tiny_model(root / arch, arch, seed=0)
        return made[arch]

    return get


@pytest.fixture
def transformer():
    """A fresh tiny Wan 2.2 I2V transformer (2 blocks, fp32) - the high-noise expert of the tiny pipeline."""
    return build_tiny_pipeline("wan22_14b_i2v", seed=0).transformer
