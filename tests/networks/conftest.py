"""Fixtures for the LoRA network/format tests: tiny real diffusers Wan transformers and pipelines."""

from __future__ import annotations

import pytest

from cadence.models.tiny import build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_models):
    """arch -> tiny Diffusers folder (shared with every test package, see tests/conftest.py)."""
    return tiny_models


@pytest.fixture
def transformer():
    """A fresh tiny Wan 2.2 I2V transformer (2 blocks, fp32) - the high-noise expert of the tiny pipeline."""
    return build_tiny_pipeline("wan22_14b_i2v", seed=0).transformer
