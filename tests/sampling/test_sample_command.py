"""`cadence sample` with exported LoRA files reproduces the in-training sample for the same seed."""

from __future__ import annotations

import argparse
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cadence.config.loader import load_config
from cadence.models.registry import load_model_adapter
from cadence.networks.formats import LoraTensors, save_lora_file
from cadence.sampling import TrainingSampler
from cadence.sampling.command import add_sample_arguments, sample_command

from .conftest import random_networks, sample_job, write_job


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cadence sample")
    add_sample_arguments(parser)
    return parser.parse_args(argv)


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _export(networks, folder, step: int) -> dict[str, str]:
    files = {}
    for expert, net in networks.items():
        path = folder / f"job_{step:09d}_{expert}.safetensors"
        save_lora_file(
            path, net.to_lora_tensors(), {"step": str(step), "expert": expert}, "comfyui", torch.float32
        )
        files[expert] = str(path)
    return files


def test_cli_sample_equals_training_sample(tiny_i2v, ctrl_png, tmp_path, capsys):
    job = sample_job(
        tiny_i2v,
        tmp_path / "runs",
        samples=[{"prompt": "a [trigger] cat", "ctrl_img": str(ctrl_png), "network_multiplier": 0.8}],
    )
    config = write_job(tmp_path / "job.yaml", job)
    cfg = load_config(config)
    adapter = load_model_adapter(cfg.model, torch.device("cpu"), torch.float32)
    networks = random_networks(adapter, cfg)
    networks["low_noise"].set_alpha(linear=3.0)  # alphas travel with the files
    trained = TrainingSampler(cfg, adapter, networks, tmp_path / "train_samples").run(7)
    files = _export(networks, tmp_path, 7)

    out = tmp_path / "cli"
    code = sample_command(
        _parse(
            [
                str(config),
                "--lora-high",
                files["high_noise"],
                "--lora-low",
                files["low_noise"],
                "--out",
                str(out),
            ]
        )
    )
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"000000007_00.{ext}") for ext in ("mp4", "webp", "png", "json")]
    cli_png = np.asarray(Image.open(out / "000000007_00.png"))
    train_png = np.asarray(Image.open(trained[2]))
    assert np.array_equal(cli_png, train_png)
    for a, b in zip(_frames(out / "000000007_00.mp4"), _frames(trained[0]), strict=True):
        assert np.array_equal(a, b)
    side = json.loads((out / "000000007_00.json").read_text())
    assert side["alphas"]["low_noise"]["linear"] == 3.0 and side["multiplier"] == 0.8
    assert side["lora_files"]["high_noise"] == files["high_noise"]

    # the strength flag changes the video; without the low-noise file that expert runs as the base model
    argv = [
        str(config),
        "--lora-high",
        files["high_noise"],
        "--lora-low",
        files["low_noise"],
        "--multiplier",
        "0.2",
        "--out",
        str(tmp_path / "weak"),
    ]
    assert sample_command(_parse(argv)) == 0
    weak = json.loads((tmp_path / "weak" / "000000007_00.json").read_text())
    assert weak["multiplier"] == 0.2
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "weak" / "000000007_00.png")), train_png)
    code = sample_command(
        _parse([str(config), "--lora-high", files["high_noise"], "--out", str(tmp_path / "hi")])
    )
    assert code == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "hi" / "000000007_00.png")), train_png)


def test_cli_model_folder_prompt_image_and_overrides(tiny_i2v, ctrl_png, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        str(tiny_i2v),
        "--prompt",
        "a red ball",
        "--prompt",
        "a blue ball",
        "--image",
        str(ctrl_png),
        "--seed",
        "5",
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "48",
        "--num-frames",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert sample_command(_parse(argv)) == 0
    capsys.readouterr()
    side = [json.loads((out / f"000000000_{i:02d}.json").read_text()) for i in (0, 1)]
    assert [s["prompt"] for s in side] == ["a red ball", "a blue ball"] and [s["seed"] for s in side] == [
        5,
        5,
    ]
    assert side[0]["alphas"] == {} and side[0]["height"] == 48
    with Image.open(out / "000000000_01.png") as png:
        assert png.size == (32, 48)


def test_cli_reports_bad_input(tiny_i2v, ctrl_png, tmp_path, capsys):
    # an I2V model without an image, a wrong size, and the two-expert model given a single --lora
    assert sample_command(_parse([str(tiny_i2v), "--prompt", "p", "--width", "40"])) == 2
    err = capsys.readouterr().err
    assert "sample.samples[0].ctrl_img: missing" in err and "sample.width: got 40" in err
    argv = [
        str(tiny_i2v),
        "--prompt",
        "p",
        "--image",
        str(ctrl_png),
        "--lora",
        str(tmp_path / "x.safetensors"),
    ]
    assert sample_command(_parse(argv)) == 2
    assert "pass --lora-high FILE" in capsys.readouterr().err
    job = sample_job(
        tiny_i2v,
        tmp_path / "runs",
        attention_backend="sage",
        samples=[{"prompt": "p", "ctrl_img": str(ctrl_png)}],
    )
    config = write_job(tmp_path / "sage.yaml", job)
    assert sample_command(_parse([str(config)])) == 2
    assert "sample.attention_backend: sage is unavailable here" in capsys.readouterr().err
    assert sample_command(_parse([str(tmp_path), "--prompt", "p"])) == 2
    assert "neither a config file" in capsys.readouterr().err


def test_cli_single_expert_lora(tiny_5b, tmp_path, capsys):
    job = sample_job(tiny_5b, tmp_path / "runs", arch="wan22_5b", prompts=["waves"])
    config = write_job(tmp_path / "job5b.yaml", job)
    cfg = load_config(config)
    adapter = load_model_adapter(cfg.model, torch.device("cpu"), torch.float32)
    networks = random_networks(adapter, cfg)
    trained = TrainingSampler(cfg, adapter, networks, tmp_path / "train").run(3)
    files = _export(networks, tmp_path, 3)
    assert sample_command(_parse([str(config), "--lora", files["main"], "--out", str(tmp_path / "cli")])) == 0
    capsys.readouterr()
    with av.open(str(tmp_path / "cli" / "000000003_00.mp4")) as container:
        assert container.streams.video[0].average_rate == 24
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "cli" / "000000003_00.png")), np.asarray(Image.open(trained[2]))
    )
    assert sample_command(_parse([str(config), "--lora-high", files["main"]])) == 2
    assert "pass --lora FILE" in capsys.readouterr().err


def test_cli_checks_lora_files_before_loading_the_model(tiny_i2v, ctrl_png, tmp_path, capsys, monkeypatch):
    """A missing file, or a low-noise file given as --lora-high, is refused before any model loading."""
    import cadence.models.registry as registry

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the LoRA files were checked")

    monkeypatch.setattr(registry, "load_model_adapter", no_loading)
    path = tmp_path / "job_000000007_low_noise.safetensors"
    g = torch.Generator().manual_seed(0)
    tensors = {"blocks.0.attn1.to_q": LoraTensors(torch.randn(2, 32, generator=g), torch.zeros(32, 2), 2.0)}
    save_lora_file(path, tensors, {"step": "7", "expert": "low_noise"}, "comfyui", torch.float32)
    base = [str(tiny_i2v), "--prompt", "p", "--image", str(ctrl_png)]
    assert sample_command(_parse([*base, "--lora-high", str(path)])) == 2
    assert "was trained for the low_noise expert; pass it with --lora-low" in capsys.readouterr().err
    assert sample_command(_parse([*base, "--lora-low", str(tmp_path / "nope.safetensors")])) == 2
    assert "LoRA file not found" in capsys.readouterr().err
    # a Wan 2.2 expert's file on a single-expert model is a warning, not an error: it reaches model loading
    single = sample_job(
        tiny_i2v, tmp_path / "runs", arch="wan21_i2v", samples=[{"prompt": "p", "ctrl_img": str(ctrl_png)}]
    )
    with pytest.raises(AssertionError, match="the model was loaded"):
        sample_command(_parse([str(write_job(tmp_path / "w21.yaml", single)), "--lora", str(path)]))
    assert sample_command(_parse([*base, "--prompt", "q --gr 0.7", "--lora-low", str(path)])) == 2
    assert "--prompt[1]: prompt flag --gr sets guidance rescale" in capsys.readouterr().err
