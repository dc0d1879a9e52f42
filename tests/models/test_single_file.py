"""Single-file transformer checkpoints (`model.name_or_path: FILE.safetensors` + `model.extras_name_or_path`):
each single-transformer family loads its transformer from a file in the layout it is published in through
diffusers' `from_single_file`, bit-equal to the folder's; Wan 2.2 A14B takes one file per expert; the cache
identity stays the folder's; and every kind of bad input is an error at its key before any weights are read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import pytest
import torch
import yaml
from original_layouts import write_original_file
from safetensors import safe_open
from safetensors.torch import save_file

from cadence.config import ConfigError, load_config_dict
from cadence.config.loader import load_config
from cadence.config.schema import ModelConfig
from cadence.config.validate import check_config_file
from cadence.models.registry import load_model_adapter, model_id_of

CPU = torch.device("cpu")
SINGLE = ("wan21", "wan21_i2v", "wan22_5b", "qwen_image", "zimage")  # FLUX.1: test_single_file_train.py


@pytest.fixture(scope="module")
def files(tiny_dirs, tmp_path_factory):
    """(arch, component) -> the tiny folder's transformer as one file in its original layout."""
    root = tmp_path_factory.mktemp("single_files")
    made: dict = {}

    def get(arch: str, component: str = "transformer") -> Path:
        if (arch, component) not in made:
            out = root / f"{arch}_{component}.safetensors"
            made[arch, component] = write_original_file(tiny_dirs(arch), component, out)
        return made[arch, component]

    return get


def _reference(folder: Path, component: str) -> torch.nn.Module:
    name = json.loads((folder / component / "config.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(str(folder / component))


def _assert_same_state(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    ours, theirs = module.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("arch", SINGLE)
def test_the_transformer_comes_from_the_file_and_equals_the_folders(tiny_dirs, files, arch):
    folder = tiny_dirs(arch)
    cfg = ModelConfig(name_or_path=str(files(arch)), arch=arch, extras_name_or_path=str(folder))
    adapter = load_model_adapter(cfg, CPU, torch.float32)
    _assert_same_state(adapter.transformer("main"), _reference(folder, "transformer"))
    with safe_open(str(files(arch)), "pt") as handle:  # Wan's and Z-Image's names are not diffusers'
        converted = set(handle.keys()) != set(adapter.transformer("main").state_dict())
    assert converted == (arch != "qwen_image")
    # latents and text embeddings come from the folder's encoders: the cache identity is the folder's
    assert adapter.model_id == model_id_of(ModelConfig(name_or_path=str(folder), arch=arch), folder)
    assert cfg.base_model() == str(files(arch))


def test_wan22_a14b_takes_one_file_per_expert(tiny_dirs, files):
    folder = tiny_dirs("wan22_14b_i2v")
    high, low = files("wan22_14b_i2v", "transformer"), files("wan22_14b_i2v", "transformer_2")
    cfg = ModelConfig(
        name_or_path={"high_noise": str(high), "low_noise": str(low)},
        arch="wan22_14b_i2v",
        extras_name_or_path=str(folder),
    )
    adapter = load_model_adapter(cfg, CPU, torch.float32)
    _assert_same_state(adapter.transformer("high_noise"), _reference(folder, "transformer"))
    _assert_same_state(adapter.transformer("low_noise"), _reference(folder, "transformer_2"))
    first = next(iter(adapter.transformer("high_noise").state_dict()))
    assert not torch.equal(  # two experts, two different weight sets
        adapter.transformer("high_noise").state_dict()[first],
        adapter.transformer("low_noise").state_dict()[first],
    )
    assert (cfg.base_model("high_noise"), cfg.base_model("low_noise")) == (str(high), str(low))


# --------------------------------------------------------------------------------------- bad input
def _job(tmp_path: Path, **model) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "name": "t",
        "training_folder": str(tmp_path / "out"),
        "model": model,
        "datasets": [{"folder_path": str(tmp_path / "data")}],
        "train": {"disable_sampling": True},
    }


def _issues(job: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config_dict(job)
    return dict(err.value.issues)


def test_config_errors_name_their_key(tiny_dirs, files, tmp_path):
    wan, a14b = tiny_dirs("wan21"), tiny_dirs("wan22_14b_i2v")
    file, high = str(files("wan21")), str(files("wan22_14b_i2v"))
    low = str(files("wan22_14b_i2v", "transformer_2"))
    missing = str(tmp_path / "nope.safetensors")
    cases = [
        (dict(name_or_path=missing, arch="wan21", extras_name_or_path=str(wan)), "model.name_or_path", "does not exist"),
        (dict(name_or_path=file, arch="wan21"), "model.extras_name_or_path", "is required with a single-file"),
        (dict(name_or_path=file, arch="wan21", extras_name_or_path=file), "model.extras_name_or_path", "is a file"),
        (dict(name_or_path=str(wan), arch="wan21", extras_name_or_path=str(a14b)), "model.extras_name_or_path",
         "is read only when name_or_path is a single-file"),
        (dict(name_or_path=high, arch="wan22_14b_i2v", extras_name_or_path=str(a14b)), "model.name_or_path",
         "one file is never loaded into both"),
        (dict(name_or_path={"high_noise": high}, arch="wan22_14b_i2v", extras_name_or_path=str(a14b)),
         "model.name_or_path", "give a file for each"),
        (dict(name_or_path={"high_noise": high, "low_noise": high}, arch="wan22_14b_i2v",
              extras_name_or_path=str(a14b)), "model.name_or_path", "same file"),
        (dict(name_or_path={"high_noise": high, "low_noise": low}, arch="wan21", extras_name_or_path=str(wan)),
         "model.name_or_path", "has one transformer"),
        (dict(name_or_path={"high_noise": high, "main": low}, arch="wan22_14b_i2v", extras_name_or_path=str(a14b)),
         "model.name_or_path", ""),
    ]  # fmt: skip
    for model, key, words in cases:
        issues = _issues(_job(tmp_path, **model))
        assert any(where.startswith(key) and words in msg for where, msg in issues.items()), (model, issues)
    # extras_name_or_path equal to a folder name_or_path is ai-toolkit's default: accepted, nothing changes
    cfg = load_config_dict(_job(tmp_path, name_or_path=str(wan), arch="wan21", extras_name_or_path=str(wan)))
    assert not cfg.model.single_file and cfg.model.folder_spec == str(wan)


def _validate(tmp_path: Path, job: dict) -> dict[str, str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(ConfigError) as err:
        check_config_file(path, machine=False)
    return dict(err.value.issues)


def _broken_files(tiny_dirs, files, tmp_path: Path) -> dict[str, Path]:
    """A LoRA file, bytes that are no safetensors file, and FLUX.1 in BFL's names at the tiny width."""
    lora = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 24),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 4),
    }
    save_file(lora, str(tmp_path / "lora.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    return {
        "lora": tmp_path / "lora.safetensors",
        "garbage": tmp_path / "garbage.safetensors",
        "flux": files("flux"),
    }


def test_validate_refuses_files_that_are_not_the_archs_transformer_before_loading(tiny_dirs, files, tmp_path):
    wan, broken = tiny_dirs("wan21"), _broken_files(tiny_dirs, files, tmp_path)
    cases = [
        (
            "wan21",
            files("wan21_i2v"),
            wan,
            "model.name_or_path",
            "of another shape (e.g. patch_embedding.weight",
        ),
        (
            "wan21",
            files("zimage"),
            wan,
            "model.name_or_path",
            "69 of the transformer's 69 weights are not in",
        ),
        ("wan21", broken["lora"], wan, "model.name_or_path", "a LoRA goes in model.lora_path"),
        ("wan21", broken["garbage"], wan, "model.name_or_path", "is not a readable .safetensors file"),
        ("wan21", files("wan21"), tiny_dirs("zimage"), "model.extras_name_or_path", "holds a 'zimage' model"),
        # diffusers' FLUX converter splits the single blocks' linear1 at FLUX.1's width (3072)
        ("flux", broken["flux"], tiny_dirs("flux"), "model.name_or_path", "converter reads"),
    ]
    for arch, file, extras, key, words in cases:
        job = _job(tmp_path, name_or_path=str(file), arch=arch, extras_name_or_path=str(extras))
        issues = _validate(tmp_path, job)
        assert any(where == key and words in msg for where, msg in issues.items()), (file.name, issues)


def test_network_checks_read_the_extras_folders_transformer_config(tiny_dirs, files, tmp_path):
    job = _job(
        tmp_path, name_or_path=str(files("wan21")), arch="wan21", extras_name_or_path=str(tiny_dirs("wan21"))
    )
    job["network"] = {"type": "lokr", "lokr_factor": 7}  # divides none of the tiny layers' sizes
    issues = _validate(tmp_path, job)
    assert "7 does not divide" in issues["network.lokr_factor"]
    job["network"] = {"type": "lora", "linear": 4}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(job))
    assert check_config_file(path, machine=False).model.transformer_files == {"main": str(files("wan21"))}


def test_checkpoint_files_and_extras_are_found_beside_the_config(tiny_dirs, files, tmp_path):
    (tmp_path / "ckpt").mkdir()
    for component in ("transformer", "transformer_2"):
        shutil.copy(files("wan22_14b_i2v", component), tmp_path / "ckpt" / f"{component}.safetensors")
    (tmp_path / "extras").symlink_to(tiny_dirs("wan22_14b_i2v"), target_is_directory=True)
    job = _job(tmp_path, arch="wan22_14b_i2v", extras_name_or_path="extras")
    job["model"]["name_or_path"] = {
        "high_noise": "ckpt/transformer.safetensors",
        "low_noise": "./ckpt/transformer_2.safetensors",
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    model = load_config(path).model
    assert model.transformer_files == {
        "high_noise": str(tmp_path / "ckpt" / "transformer.safetensors"),
        "low_noise": str(tmp_path / "ckpt" / "transformer_2.safetensors"),
    }
    assert (
        Path(model.folder_spec).samefile(tiny_dirs("wan22_14b_i2v"))
        and model.folder_key == "extras_name_or_path"
    )
