"""Helpers for config tests: small valid configs in both layouts."""

from __future__ import annotations

import copy
from typing import Any

import pytest


def flat(**sections: Any) -> dict[str, Any]:
    """A minimal valid flat-layout config; keyword sections are merged over it."""
    base: dict[str, Any] = {
        "name": "t",
        "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
        "datasets": [{"folder_path": "/data/videos"}],
        "train": {"disable_sampling": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def seed(body: dict[str, Any], process_type: str = "sd_trainer") -> dict[str, Any]:
    """Wrap a flat config into the seed layout."""
    body = copy.deepcopy(body)
    name = body.pop("name")
    return {
        "job": "extension",
        "config": {"name": name, "process": [{"type": process_type, **body}]},
        "meta": {"name": "[name]", "version": "1.0"},
    }


@pytest.fixture
def make_flat():
    return flat


@pytest.fixture
def make_seed():
    return seed
