"""`cadence convert`: exact round trips between layouts, and converted files load in diffusers unchanged."""

from __future__ import annotations

import argparse

import pytest
import torch
from diffusers import WanImageToVideoPipeline
from safetensors import safe_open

from cadence.config.schema import NetworkConfig
from cadence.models.tiny import write_tiny_model
from cadence.networks import LoRANetwork, LoraTensors, load_lora_file, save_lora_file
from cadence.tools.convert import convert_command


def _modules() -> dict[str, LoraTensors]:
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.attn1.to_q": LoraTensors(
            torch.randn(4, 24, generator=g), torch.randn(24, 4, generator=g), 3.0
        ),
        "blocks.1.attn2.to_out.0": LoraTensors(
            torch.randn(4, 24, generator=g), torch.randn(24, 4, generator=g), 3.0
        ),
        "patch_embedding": LoraTensors(
            torch.randn(2, 36, 1, 2, 2, generator=g), torch.randn(24, 2, 1, 1, 1, generator=g), 0.5
        ),
    }


def _raw(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _convert(src, dst, to) -> int:
    return convert_command(argparse.Namespace(input=str(src), output=str(dst), to=to))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_comfyui_diffusers_comfyui_is_bitwise_exact(tmp_path, dtype) -> None:
    src = tmp_path / "run_000000500_high_noise.safetensors"
    save_lora_file(src, _modules(), {"step": "500", "expert": "high_noise"}, "comfyui", dtype)
    assert _convert(src, tmp_path / "d.safetensors", "diffusers") == 0
    assert _convert(tmp_path / "d.safetensors", tmp_path / "c.safetensors", "comfyui") == 0
    original, back = _raw(src), _raw(tmp_path / "c.safetensors")
    assert set(original) == set(back)
    for key, value in original.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    middle = load_lora_file(tmp_path / "d.safetensors")
    assert middle.layout == "diffusers" and middle.metadata["step"] == "500"
    assert middle.metadata["converted_from"] == "run_000000500_high_noise.safetensors (comfyui)"
    assert {n: t.alpha for n, t in middle.modules.items()} == {n: t.alpha for n, t in _modules().items()}
    assert (
        load_lora_file(tmp_path / "c.safetensors").metadata["converted_from"] == "d.safetensors (diffusers)"
    )


def test_diffusers_comfyui_diffusers_is_bitwise_exact(tmp_path) -> None:
    src = tmp_path / "src.safetensors"
    save_lora_file(src, _modules(), {}, "diffusers", torch.bfloat16)
    _convert(src, tmp_path / "c.safetensors", "comfyui")
    _convert(tmp_path / "c.safetensors", tmp_path / "d.safetensors", "diffusers")
    original, back = _raw(src), _raw(tmp_path / "d.safetensors")
    assert set(original) == set(back) and all(torch.equal(back[k], v) for k, v in original.items())
    assert {n: t.alpha for n, t in load_lora_file(tmp_path / "d.safetensors").modules.items()} == {
        n: t.alpha for n, t in _modules().items()
    }


def test_converted_files_load_in_diffusers_with_identical_effect(tmp_path) -> None:
    folder = write_tiny_model(tmp_path / "tiny", "wan22_14b_i2v")
    pipe = WanImageToVideoPipeline.from_pretrained(folder)
    net = LoRANetwork(pipe.transformer, NetworkConfig(linear=4, linear_alpha=1.0), name="high_noise").apply()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in net.modules_by_name.values():
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.3)
    src = tmp_path / "src.safetensors"
    save_lora_file(src, net.to_lora_tensors(), {"step": "1"}, "comfyui", torch.float32)
    _convert(src, tmp_path / "d.safetensors", "diffusers")
    _convert(tmp_path / "d.safetensors", tmp_path / "c.safetensors", "comfyui")
    x = torch.randn(1, 36, 1, 4, 4, generator=g)
    t, text = torch.tensor([900.0]), torch.randn(1, 5, 32, generator=g)
    outputs = []
    for name in ("src", "d", "c"):
        fresh = WanImageToVideoPipeline.from_pretrained(folder)
        fresh.load_lora_weights(str(tmp_path / f"{name}.safetensors"))
        with torch.no_grad():
            outputs.append(fresh.transformer(x, t, text, return_dict=False)[0])
    with torch.no_grad():
        expected = pipe.transformer(x, t, text, return_dict=False)[0]
    for got in outputs:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_kohya_input_converts(tmp_path) -> None:
    from safetensors.torch import save_file

    src = tmp_path / "musubi.safetensors"
    save_file(
        {
            "lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.ones(2, 8),
            "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.ones(8, 2),
            "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(1.0),
        },
        str(src),
    )
    assert _convert(src, tmp_path / "c.safetensors", "comfyui") == 0
    assert "diffusion_model.blocks.0.self_attn.q.alpha" in _raw(tmp_path / "c.safetensors")


def test_bad_input_is_reported(tmp_path, capsys) -> None:
    assert _convert(tmp_path / "missing.safetensors", tmp_path / "o.safetensors", "comfyui") == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_cli_wiring(tmp_path, capsys) -> None:
    from cadence.cli import main

    src = tmp_path / "a.safetensors"
    save_lora_file(src, _modules(), {"step": "1"}, "comfyui", torch.float32)
    assert main(["convert", str(src), str(tmp_path / "b.safetensors"), "--to", "diffusers"]) == 0
    assert main(["inspect", str(tmp_path / "b.safetensors"), "--json"]) == 0
    assert '"layout": "diffusers"' in capsys.readouterr().out


def test_output_that_is_the_input_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """Issue 21: `cadence convert IN IN` (also through a symlink or a relative path) must not touch IN."""
    src = tmp_path / "lora.safetensors"
    save_lora_file(src, _modules(), {"step": "1"}, "comfyui", torch.float32)
    before = src.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for out in (src, link, "lora.safetensors", tmp_path / "sub" / ".." / "lora.safetensors"):
        assert _convert(src, out, "diffusers") == 2
        assert "is one of the input files" in capsys.readouterr().err
    assert src.read_bytes() == before and link.is_symlink()


def test_types_without_a_diffusers_layout_are_refused(tmp_path, capsys) -> None:
    from cadence.networks.tensors import AdapterTensors

    g = torch.Generator().manual_seed(0)
    hada = {
        k: torch.randn(*s, generator=g)
        for k, s in (
            ("hada_w1_a", (24, 2)),
            ("hada_w1_b", (2, 24)),
            ("hada_w2_a", (24, 2)),
            ("hada_w2_b", (2, 24)),
        )
    }
    src = tmp_path / "loha.safetensors"
    save_lora_file(
        src, {"blocks.0.attn1.to_q": AdapterTensors("loha", hada, 1.0)}, {}, "comfyui", torch.float32
    )
    assert _convert(src, tmp_path / "out.safetensors", "diffusers") == 2
    assert "loha adapters have no diffusers layout" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_to_kohya_and_back_is_exact_and_names_the_tools(tmp_path, capsys) -> None:
    from cadence.networks.tensors import AdapterTensors

    g = torch.Generator().manual_seed(1)
    lokr = {"lokr_w1": torch.randn(4, 4, generator=g), "lokr_w2_a": torch.randn(6, 2, generator=g)}
    lokr["lokr_w2_b"] = torch.randn(2, 6, generator=g)
    modules = {k: v for k, v in _modules().items() if k != "patch_embedding"}
    src = tmp_path / "src.safetensors"
    save_lora_file(src, modules, {"step": "3"}, "comfyui", torch.float16)
    assert _convert(src, tmp_path / "k.safetensors", "kohya") == 0
    out = capsys.readouterr().out
    assert "k.safetensors (kohya layout) loads in musubi-tuner at the trained strength" in out
    raw = _raw(tmp_path / "k.safetensors")
    assert (
        "lora_unet_blocks_0_self_attn_q.lora_down.weight" in raw
        and "lora_unet_blocks_0_self_attn_q.alpha" in raw
    )
    assert _convert(tmp_path / "k.safetensors", tmp_path / "back.safetensors", "comfyui") == 0
    assert "does not load in musubi-tuner" in capsys.readouterr().out
    back, orig = _raw(tmp_path / "back.safetensors"), _raw(src)
    assert back.keys() == orig.keys() and all(torch.equal(back[k], orig[k]) for k in orig)
    kron = tmp_path / "lokr.safetensors"
    save_lora_file(
        kron, {"blocks.0.attn1.to_q": AdapterTensors("lokr", lokr, 3.0)}, {}, "comfyui", torch.float32
    )
    assert _convert(kron, tmp_path / "lokr_k.safetensors", "kohya") == 0
    assert "lora_unet_blocks_0_self_attn_q.lokr_w2_a" in _raw(tmp_path / "lokr_k.safetensors")
    assert load_lora_file(tmp_path / "lokr_k.safetensors").modules["blocks.0.attn1.to_q"].alpha == 3.0
