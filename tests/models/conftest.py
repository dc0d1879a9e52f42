"""Tiny Wan folders shared by the model tests (written once per session; writing is ~1 s per arch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.models.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Return a function arch -> folder that writes each tiny model at most once."""
    root = tmp_path_factory.mktemp("tiny_models")
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = write_tiny_model(root / arch, arch, seed=0)
        return made[arch]

    return get
