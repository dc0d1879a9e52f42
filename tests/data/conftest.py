"""Fixtures for the data tests: one synthetic dataset per session, copied when a test changes files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cadence.config.schema import JobConfig
from cadence.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "clips")


@pytest.fixture
def dataset_dir(synthetic_master: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the synthetic dataset (6 clips 96x64/64x96 x 33 frames, 3 images)."""
    return Path(shutil.copytree(synthetic_master, tmp_path / "clips"))


def _make_config(folder: Path, trigger_word: str | None = "sks", **dataset: object) -> JobConfig:
    """A JobConfig with one dataset at `folder`; dataset fields override the small test defaults."""
    ds = {"folder_path": folder, "resolution": [64], "num_frames": 17, **dataset}
    return JobConfig(
        name="test_run",
        training_folder=folder.parent / "output",
        trigger_word=trigger_word,
        model={"name_or_path": "tiny", "arch": "wan22_14b_i2v"},
        datasets=[ds],
    )


@pytest.fixture
def make_config():
    return _make_config
