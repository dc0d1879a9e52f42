"""Starting from LoRA files: `network.pretrained_lora_path` (trained adapters start from a file) and
`model.lora_path` (a LoRA merged into the frozen base), one file per expert, ai-toolkit's sibling rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cadence.config import ConfigError
from cadence.config.loader import load_config
from cadence.networks.formats import load_lora_file
from cadence.train.runner import run_training
from cadence.train.setup import build_training

from .conftest import job_dict, write_job


@pytest.fixture(scope="module")
def trained(tiny_i2v: Path, clips: Path, tmp_path_factory) -> Path:
    """Step-4 LoRA files of a short run: job_000000004_{high,low}_noise.safetensors."""
    out = tmp_path_factory.mktemp("source")
    job = job_dict(tiny_i2v, clips, out, steps=4, switch_boundary_every=2, lr=3e-2)
    assert run_training(write_job(out / "job.yaml", job)) == 0
    return out / "job"


def _config(tiny_i2v: Path, clips: Path, tmp_path: Path, **sections) -> Path:
    job = job_dict(tiny_i2v, clips, tmp_path / "out", steps=2)
    for section, values in sections.items():
        job.setdefault(section, {}).update(values)
    return write_job(tmp_path / "job.yaml", job)


def test_pretrained_lora_starts_both_experts_from_their_files(trained, tiny_i2v, clips, tmp_path) -> None:
    high = trained / "job_000000004_high_noise.safetensors"
    config = _config(tiny_i2v, clips, tmp_path, network={"pretrained_lora_path": str(high)})
    setup = build_training(load_config(config))
    try:
        assert setup.start_step == 0
        for expert in ("high_noise", "low_noise"):
            source = load_lora_file(trained / f"job_000000004_{expert}.safetensors").modules
            now = setup.networks[expert].to_lora_tensors()
            assert source.keys() == now.keys()
            for name, t in source.items():
                assert all(torch.equal(t.tensors[k].float(), now[name].tensors[k].float()) for k in t.tensors)
            assert any(float(t.up.abs().sum()) > 0 for t in now.values()), "not the zero init"
    finally:
        setup.close()


def test_pretrained_lora_of_another_rank_is_refused_naming_key_and_file(
    trained, tiny_i2v, clips, tmp_path
) -> None:
    high = trained / "job_000000004_high_noise.safetensors"
    config = _config(
        tiny_i2v, clips, tmp_path, network={"pretrained_lora_path": str(high), "linear": 8, "linear_alpha": 8}
    )
    with pytest.raises(ConfigError) as err:  # before the model is loaded: the preflight reads the file
        build_training(load_config(config))
    assert "network.pretrained_lora_path" in str(err.value) and str(high) in str(err.value)


def test_missing_or_unlabelled_files_are_config_errors(trained, tiny_i2v, clips, tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tiny_i2v, clips, tmp_path, network={"pretrained_lora_path": "nope.safetensors"}))
    assert "does not exist" in str(err.value)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes((trained / "job_000000004_high_noise.safetensors").read_bytes())
    with pytest.raises(ConfigError) as err2:
        build_training(load_config(_config(tiny_i2v, clips, tmp_path, model={"lora_path": str(plain)})))
    assert "does not say which expert" in str(err2.value)


def test_base_lora_is_merged_into_the_frozen_weights(trained, tiny_i2v, clips, tmp_path) -> None:
    files = {e: trained / f"job_000000004_{e}.safetensors" for e in ("high_noise", "low_noise")}
    plain_setup = build_training(load_config(_config(tiny_i2v, clips, tmp_path / "a")))
    merged_setup = build_training(
        load_config(
            _config(
                tiny_i2v, clips, tmp_path / "b", model={"lora_path": {k: str(v) for k, v in files.items()}}
            )
        )
    )
    try:
        for expert, path in files.items():
            plain = dict(plain_setup.adapter.transformer(expert).named_modules())
            merged = dict(merged_setup.adapter.transformer(expert).named_modules())
            for name, t in load_lora_file(path).modules.items():
                expected = plain[name].weight.float() + t.diff_weight()
                assert torch.allclose(merged[name].weight.float(), expected, atol=1e-6), name
        assert merged_setup.start_step == 0
    finally:
        plain_setup.close()
        merged_setup.close()


def test_validate_names_a_file_that_does_not_fit_before_any_weights_load(trained, tiny_i2v, clips, tmp_path):
    from cadence.config.validate import check_config_file

    high = trained / "job_000000004_high_noise.safetensors"
    config = _config(
        tiny_i2v, clips, tmp_path, network={"pretrained_lora_path": str(high), "linear": 8, "linear_alpha": 8}
    )
    with pytest.raises(ConfigError) as err:
        check_config_file(config, machine=False)
    issues = dict(err.value.issues)
    assert "its rank is 4, the config trains rank 8" in issues["network.pretrained_lora_path"]
    lokr = _config(
        tiny_i2v,
        clips,
        tmp_path / "k",
        network={"type": "lokr", "lokr_full_rank": True, "pretrained_lora_path": str(high)},
    )
    with pytest.raises(ConfigError) as err:
        check_config_file(lokr, machine=False)
    assert (
        "it holds lora adapters, the config trains lokr"
        in dict(err.value.issues)["network.pretrained_lora_path"]
    )
    fine = _config(tiny_i2v, clips, tmp_path / "ok", model={"lora_path": str(high)})
    assert check_config_file(fine, machine=False).model.lora_path == str(high)
