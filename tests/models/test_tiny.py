"""The tiny model folders load through diffusers' own pipeline classes and can generate."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image
from safetensors.torch import load_file

from cadence.models.tiny import ARCHS, tiny_model_command, write_tiny_model

I2V = {"wan21_i2v", "wan22_14b_i2v"}


@pytest.mark.parametrize("arch", ARCHS)
def test_pipeline_loads_and_generates_two_steps(tiny_dirs, arch):
    cls = WanImageToVideoPipeline if arch in I2V else WanPipeline
    pipe = cls.from_pretrained(tiny_dirs(arch))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt="a cat walks on the beach",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    if arch in I2V:
        kwargs["image"] = Image.fromarray(np.full((32, 32, 3), 90, np.uint8))
    frames = pipe(**kwargs).frames
    assert frames.shape == (1, 5, 32, 32, 3)
    assert np.isfinite(frames).all()
    assert (pipe.transformer_2 is not None) == (arch in ("wan22_14b", "wan22_14b_i2v"))


def test_folder_layout_and_pipeline_config(tiny_dirs):
    index = json.loads((tiny_dirs("wan22_14b_i2v") / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    assert index["boundary_ratio"] == 0.9
    assert index["expand_timesteps"] is False
    assert index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    index5 = json.loads((tiny_dirs("wan22_5b") / "model_index.json").read_text())
    assert index5["expand_timesteps"] is True
    vae5 = json.loads((tiny_dirs("wan22_5b") / "vae" / "config.json").read_text())
    assert (vae5["z_dim"], vae5["patch_size"], vae5["is_residual"]) == (48, 2, True)
    index21 = json.loads((tiny_dirs("wan21_i2v") / "model_index.json").read_text())
    assert index21["image_encoder"][1] == "CLIPVisionModel"


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = write_tiny_model(tmp_path / "a", "wan21", seed=3)
    b = write_tiny_model(tmp_path / "b", "wan21", seed=3)
    c = write_tiny_model(tmp_path / "c", "wan21", seed=4)
    name = "transformer/diffusion_pytorch_model.safetensors"
    wa, wb, wc = (load_file(str(p / name)) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert all(v.dtype == torch.float32 for v in wa.values())


def test_cli_writes_folder_and_prints_path(tmp_path, capsys):
    args = argparse.Namespace(dir=str(tmp_path / "m"), arch="wan22_14b", seed=0)
    assert tiny_model_command(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "transformer_2" / "config.json").is_file()
    bad = argparse.Namespace(dir=str(tmp_path / "x"), arch="sdxl", seed=0)
    assert tiny_model_command(bad) == 2
    assert "sdxl" in capsys.readouterr().err
