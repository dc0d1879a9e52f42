"""A model folder whose config.json is broken is a clear error naming that file, in validate and in train
(it used to be a JSONDecodeError traceback from deep inside the loaders)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cadence.config.validate import check_config_file
from cadence.train.runner import run_training

from .conftest import job_dict, write_job


@pytest.mark.parametrize("component", ["transformer", "vae", "transformer_2"])
def test_broken_config_json_is_named(
    tiny_i2v: Path, clips: Path, tmp_path: Path, caplog, component: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_i2v, model)
    broken = model / component / "config.json"
    broken.write_text('{"_class_name": "WanTransformer3DModel",')  # cut off mid-write
    config = write_job(tmp_path / "job.yaml", job_dict(model, clips, tmp_path / "out", steps=2))
    assert run_training(config) == 2
    assert f"{broken} is not valid JSON" in caplog.text and "Traceback" not in caplog.text
    with pytest.raises(Exception) as err:
        check_config_file(config)
    assert f"{broken} is not valid JSON" in str(err.value)
