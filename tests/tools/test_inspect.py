"""`cadence inspect`: layout, ranks, alphas, dtypes, targets, per-block magnitudes, metadata."""

from __future__ import annotations

import argparse
import json

import torch

from cadence.networks import LoraTensors, save_lora_file
from cadence.tools.inspect import inspect_command


def _write(path, layout="comfyui") -> dict[str, LoraTensors]:
    g = torch.Generator().manual_seed(0)
    modules = {}
    for block in (0, 1):
        for part in ("attn1.to_q", "attn2.to_k", "ffn.net.2"):
            up = torch.randn(6, 4, generator=g) * (block + 1)  # block 1 is twice as strong
            modules[f"blocks.{block}.{part}"] = LoraTensors(torch.randn(4, 6, generator=g), up, 2.0)
    save_lora_file(path, modules, {"step": "750", "base_model": "tiny"}, layout, torch.bfloat16)
    return modules


def _run(path, as_json: bool, capsys) -> str:
    assert inspect_command(argparse.Namespace(file=str(path), json=as_json)) == 0
    return capsys.readouterr().out


def test_json_report(tmp_path, capsys) -> None:
    path = tmp_path / "lora.safetensors"
    modules = _write(path, "diffusers")
    report = json.loads(_run(path, True, capsys))
    assert report["layout"] == "diffusers" and report["modules"] == 6 and report["blocks"] == [0, 1]
    assert report["rank"] == [4] and report["alpha"] == [2] and report["dtype"] == ["bfloat16"]
    assert report["targets"] == {"attn1.to_q": 2, "attn2.to_k": 2, "ffn.net.2": 2}
    assert report["metadata"]["step"] == "750" and report["metadata"]["base_model"] == "tiny"
    per_block = report["magnitude"]["per_block"]
    expected = {
        b: sum(
            float(
                (
                    modules[f"blocks.{b}.{p}"].up.bfloat16().float()
                    @ modules[f"blocks.{b}.{p}"].down.bfloat16().float()
                )
                .abs()
                .mean()
                * 0.5
            )
            for p in ("attn1.to_q", "attn2.to_k", "ffn.net.2")
        )
        / 3
        for b in (0, 1)
    }
    assert abs(per_block["0"] - expected[0]) < 1e-5 and abs(per_block["1"] - expected[1]) < 1e-5
    assert per_block["1"] > 1.5 * per_block["0"]


def test_table_report(tmp_path, capsys) -> None:
    path = tmp_path / "lora.safetensors"
    _write(path)
    out = _run(path, False, capsys)
    assert "layout      comfyui" in out
    assert "modules     6 in 2 blocks (0-1), 0 conv" in out
    assert "attn2.to_k" in out and "block   1" in out and "base_model" in out


def test_unreadable_file_is_reported(tmp_path, capsys) -> None:
    path = tmp_path / "nope.safetensors"
    assert inspect_command(argparse.Namespace(file=str(path), json=False)) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_lokr_and_dora_report_type_factors_and_scope(tmp_path, capsys) -> None:
    from cadence.config.schema import NetworkConfig, NetworkKwargs
    from cadence.models.tiny import build_tiny_pipeline
    from cadence.networks import LoRANetwork

    model = build_tiny_pipeline("wan22_14b_i2v", seed=0).transformer
    cfg = NetworkConfig(
        type="lokr", lokr_full_rank=False, linear=2, lokr_factor=4, network_kwargs=NetworkKwargs(dora_wd=True)
    )
    path = tmp_path / "dokr.safetensors"
    save_lora_file(path, LoRANetwork(model, cfg, name="x").to_lora_tensors(), {}, "comfyui", torch.float16)
    report = json.loads(_run(path, True, capsys))
    assert report["type"] == ["lokr"] and report["dora"] == ["input"] and report["rank"] == [2]
    assert "4x4 (x) 6x6" in report["lokr_factors"] and report["dtype"] == ["float16"]
    assert "low-rank part only" in report["magnitude"]["scope"]
    out = _run(path, False, capsys)
    assert "type        lokr + DoRA (magnitude per input axis)" in out and "factors     " in out
    full = tmp_path / "full.safetensors"
    save_lora_file(
        full,
        LoRANetwork(model, NetworkConfig(type="lokr"), name="x").to_lora_tensors(),
        {},
        "comfyui",
        torch.float32,
    )
    report = json.loads(_run(full, True, capsys))
    assert report["rank"] == ["full"] and report["alpha"] == [] and report["dora"] == []


def test_report_names_the_tools_that_load_the_file(tmp_path, capsys) -> None:
    path = tmp_path / "lora.safetensors"
    _write(path)  # comfyui layout, block modules only
    report = json.loads(_run(path, True, capsys))
    assert report["loaders"]["ComfyUI"]["loads"] and report["loaders"]["diffusers"]["loads"]
    assert not report["loaders"]["musubi-tuner"]["loads"]
    out = _run(path, False, capsys)
    assert "musubi-tuner  no: its --lora_weight merge matches only lora_unet_" in out and "--to kohya" in out
