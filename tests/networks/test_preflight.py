"""`cadence validate` checks the adapters on an empty model before any weights are read: LoKr factors and
Conv targets of LoKr/LoHa are config errors at their key, and it says which tools will load the files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from cadence.config.validate import validate_command


def _job(tmp_path: Path, model: Path, network: dict, save: dict | None = None) -> Path:
    (tmp_path / "clips").mkdir(exist_ok=True)
    job = {
        "name": "j",
        "training_folder": str(tmp_path / "runs"),
        "datasets": [{"folder_path": str(tmp_path / "clips")}],
        "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
        "train": {"disable_sampling": True},
        "network": network,
        "save": save or {},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _validate(path: Path, capsys) -> tuple[int, str, str]:
    code = validate_command(argparse.Namespace(config=str(path), config_only=True, dataset_config=None))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_factor_that_does_not_divide_is_an_error_at_the_key(tiny_pipeline_dir, tmp_path, capsys) -> None:
    path = _job(tmp_path, tiny_pipeline_dir("wan22_14b_i2v"), {"type": "lokr", "lokr_factor": 5})
    code, _, err = _validate(path, capsys)
    assert code == 2 and "network.lokr_factor: 5 does not divide the size" in err and "divisors of" in err
    path = _job(tmp_path, tiny_pipeline_dir("wan22_14b_i2v"), {"type": "lokr", "lokr_factor": 4})
    assert _validate(path, capsys)[0] == 0


def test_conv_target_of_loha_is_an_error(tiny_pipeline_dir, tmp_path, capsys) -> None:
    network = {"type": "loha", "conv": 4, "network_kwargs": {"include_patterns": ["patch_embedding"]}}
    code, _, err = _validate(_job(tmp_path, tiny_pipeline_dir("wan22_14b_i2v"), network), capsys)
    assert code == 2 and "network.type: loha adapts Linear layers only" in err and "locon" in err


@pytest.mark.parametrize(
    ("save", "network", "loads", "refuses"),
    [
        ({}, {}, ["ComfyUI", "diffusers"], {"musubi-tuner": "--to kohya"}),
        ({"format": "kohya"}, {}, ["ComfyUI", "diffusers", "musubi-tuner"], {}),
        (
            {},
            {"network_kwargs": {"include_patterns": ["proj_out"]}},
            ["ComfyUI"],
            {"diffusers": "save.format: diffusers", "musubi-tuner": "save.format: kohya"},
        ),
        ({"format": "kohya"}, {"type": "lokr"}, ["ComfyUI", "musubi-tuner"], {"diffusers": "LoRA only"}),
    ],
)
def test_validate_says_which_tools_load_the_files(
    tiny_pipeline_dir, tmp_path, capsys, save, network, loads, refuses
):
    code, out, _ = _validate(_job(tmp_path, tiny_pipeline_dir("wan22_14b_i2v"), network, save), capsys)
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("# the LoRA files")]
    assert len(notes) == 3, notes
    for tool in loads:
        assert any(f"load in {tool} at the trained strength" in n for n in notes), (tool, notes)
    for tool, hint in refuses.items():
        assert any(f"do not load in {tool}:" in n and hint in n for n in notes), (tool, notes)
