"""Training from a single-file transformer checkpoint, end to end: `model.name_or_path: FILE.safetensors` (the
transformer in its original layout) + `model.extras_name_or_path: the tiny folder` trains, the transformer
training loads equals the folder's bit for bit, the LoRA file names the checkpoint as its base model, and
`cadence sample CONFIG` samples it. Wan 2.1 on its tiny folder; FLUX.1 on a folder whose transformer has
FLUX.1's width (diffusers' FLUX converter splits the single blocks' fused linear1 at 3072), one block of each
kind, in bf16 to keep the steps short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import pytest
import torch
import yaml
from original_layouts import original_state, write_original_file
from safetensors.torch import save_file

from cadence.cli import main
from cadence.config.loader import load_config
from cadence.data.synthetic import write_synthetic_dataset
from cadence.models.registry import load_model_adapter
from cadence.networks.formats import load_lora_file
from cadence.train.runner import run_training

CPU = torch.device("cpu")
STEPS = 2


def _job(tmp_path: Path, arch: str, file: Path, extras: Path, data: Path, frames: int, dtype: str) -> Path:
    job = {
        "name": "job",
        "training_folder": str(tmp_path / "out"),
        "device": "cpu",
        "trigger_word": "sks",
        "model": {"name_or_path": str(file), "extras_name_or_path": str(extras), "arch": arch},
        "network": {"type": "lora", "linear": 4, "linear_alpha": 4},
        "save": {"save_every": STEPS, "dtype": "float32"},
        "datasets": [{"folder_path": str(data), "resolution": [32], "num_frames": frames}],
        "train": {"steps": STEPS, "lr": 1e-3, "dtype": dtype, "optimizer": "adamw", "seed": 3},
        "sample": {"width": 32, "height": 32, "num_frames": frames, "sample_steps": 2, "sample_every": 1000},
        "logging": {"tensorboard": False},
    }
    job["sample"]["prompts"] = ["sks, a red ball"]
    job["train"]["disable_sampling"] = True
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _trains_from_the_file(path: Path, folder: Path, file: Path, dtype: torch.dtype) -> Path:
    """Train the job; the transformer its model section loads equals the folder's; returns the LoRA file."""
    cfg = load_config(path)
    assert cfg.model.single_file and cfg.model.folder_spec == str(folder)
    loaded = load_model_adapter(cfg.model, CPU, dtype).transformer(next(iter(cfg.model.transformer_files)))
    name = json.loads((folder / "transformer" / "config.json").read_text())["_class_name"]
    reference = getattr(diffusers, name).from_pretrained(str(folder / "transformer"), torch_dtype=dtype)
    ours, theirs = loaded.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    del loaded, reference, ours, theirs

    assert run_training(path) == 0
    lora_path = Path(cfg.training_folder) / "job" / f"job_{STEPS:09d}.safetensors"
    lora = load_lora_file(lora_path)
    assert lora.metadata["base_model"] == str(file) and lora.modules
    assert any(
        t.tensors["lora_up.weight"].abs().sum() > 0 for t in lora.modules.values()
    )  # the adapter trained
    return lora_path


@pytest.mark.slow
def test_wan_trains_from_its_original_layout_file_and_samples_from_the_config(tiny_dirs, tmp_path):
    folder = tiny_dirs("wan21")
    file = write_original_file(folder, "transformer", tmp_path / "wan2.1_t2v_tiny_bf16.safetensors")
    data = write_synthetic_dataset(
        tmp_path / "clips", n_videos=2, n_images=0, width=48, height=32, num_frames=9
    )
    path = _job(tmp_path, "wan21", file, folder, data, frames=5, dtype="fp32")
    lora = _trains_from_the_file(path, folder, file, torch.float32)
    out = tmp_path / "samples"
    argv = [
        "sample",
        str(path),
        "--lora",
        str(lora),
        "--prompt",
        "sks, a red ball",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert {p.suffix for p in out.iterdir()} >= {".mp4", ".json"}


@pytest.fixture(scope="module")
def wide_flux(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """(folder, file): the tiny FLUX.1-dev folder with a 3072-wide transformer (bf16, seeded), and that
    transformer in Black Forest Labs' layout (flux1-dev.safetensors' names) as one file."""
    root = tmp_path_factory.mktemp("wide_flux")
    folder = root / "flux_wide"
    shutil.copytree(tiny_models("flux"), folder)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config.update(num_attention_heads=24, attention_head_dim=128, axes_dims_rope=[16, 56, 56])
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel.from_config(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.bfloat16) * 0.02)
    shutil.rmtree(folder / "transformer")
    model.save_pretrained(str(folder / "transformer"))
    file = root / "flux1-dev-wide.safetensors"
    save_file(original_state(model), str(file))
    return folder, file


@pytest.mark.slow
def test_flux_trains_from_its_bfl_layout_file(wide_flux, tmp_path):
    folder, file = wide_flux
    data = write_synthetic_dataset(tmp_path / "imgs", n_videos=0, n_images=2, width=32, height=32)
    path = _job(tmp_path, "flux", file, folder, data, frames=1, dtype="bf16")
    _trains_from_the_file(path, folder, file, torch.bfloat16)
