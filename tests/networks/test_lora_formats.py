"""LoRA file layouts: keys, metadata, dtypes, exact round trips, foreign files and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cadence.networks import LoraTensors, load_lora_file, save_lora_file


def _modules(seed: int = 0) -> dict[str, LoraTensors]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.attn1.to_q": LoraTensors(
            torch.randn(4, 12, generator=g), torch.randn(12, 4, generator=g), 3.0
        ),
        "blocks.1.ffn.net.0.proj": LoraTensors(
            torch.randn(4, 12, generator=g), torch.randn(48, 4, generator=g), 3.0
        ),
        "patch_embedding": LoraTensors(
            torch.randn(2, 16, 1, 2, 2, generator=g), torch.randn(24, 2, 1, 1, 1, generator=g), 1.5
        ),
    }


def _raw(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_comfyui_keys_alpha_and_metadata(tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    save_lora_file(path, _modules(), {"step": 250, "expert": "high_noise"}, "comfyui", torch.float16)
    tensors, meta = _raw(path)
    assert tensors["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].dtype == torch.float16
    assert tensors["diffusion_model.blocks.1.ffn.0.lora_up.weight"].shape == (48, 4)
    alpha = tensors["diffusion_model.blocks.0.self_attn.q.alpha"]
    assert alpha.dim() == 0 and alpha.dtype == torch.float32 and alpha.item() == 3.0
    assert "diffusion_model.patch_embedding.alpha" in tensors
    assert meta["step"] == "250" and meta["expert"] == "high_noise" and meta["layout"] == "comfyui"
    assert meta["cadence_format_version"] == "1" and meta["rank"] == "2,4" and meta["alpha"] == "1.5,3"
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # atomic: no temp file left


def test_diffusers_keys_and_adapter_metadata(tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    save_lora_file(path, _modules(), {}, "diffusers", torch.float32)
    tensors, meta = _raw(path)
    assert set(tensors) == {f"transformer.{n}.lora_{ab}.weight" for n in _modules() for ab in "AB"}
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.lora_alpha"] == 3.0
    assert config["transformer.rank_pattern"] == {r"patch_embedding": 2}
    assert config["transformer.alpha_pattern"] == {r"patch_embedding": 1.5}
    assert sorted(config["transformer.target_modules"]) == sorted(_modules())


@pytest.mark.parametrize("layout", ["comfyui", "diffusers", "kohya"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_exact(tmp_path, layout, dtype) -> None:
    path = tmp_path / "lora.safetensors"
    modules = _modules()
    save_lora_file(path, modules, {"base_model": "tiny"}, layout, dtype)
    loaded = load_lora_file(path)
    assert loaded.layout == layout and loaded.metadata["base_model"] == "tiny"
    assert "lora_adapter_metadata" not in loaded.metadata and "format" not in loaded.metadata
    assert set(loaded.modules) == set(modules)
    for name, t in modules.items():
        got = loaded.modules[name]
        assert got.down.dtype == dtype and torch.equal(got.down, t.down.to(dtype))
        assert torch.equal(got.up, t.up.to(dtype)) and got.alpha == t.alpha


def test_kohya_file_loads_with_diffusers_names(tmp_path) -> None:
    path = tmp_path / "musubi.safetensors"
    down, up = torch.randn(4, 12), torch.randn(12, 4)
    save_file(
        {
            "lora_unet_blocks_3_cross_attn_k_img.lora_down.weight": down,
            "lora_unet_blocks_3_cross_attn_k_img.lora_up.weight": up,
            "lora_unet_blocks_3_cross_attn_k_img.alpha": torch.tensor(2.0),
        },
        str(path),
    )
    loaded = load_lora_file(path)
    assert loaded.layout == "kohya"
    t = loaded.modules["blocks.3.attn2.add_k_proj"]
    assert torch.equal(t.down, down) and torch.equal(t.up, up) and t.alpha == 2.0


def test_missing_alpha_means_scale_one(tmp_path) -> None:
    path = tmp_path / "noalpha.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(8, 12),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(12, 8),
        },
        str(path),
    )
    assert load_lora_file(path).modules["blocks.0.attn1.to_q"].alpha == 8.0


def test_unknown_file_names_the_file_and_first_key(tmp_path) -> None:
    path = tmp_path / "sdxl.safetensors"
    save_file({"unet.down_blocks.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match=r"sdxl\.safetensors.*unet\.down_blocks\.0\.weight"):
        load_lora_file(path)


def test_unknown_module_names_the_file(tmp_path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.mystery.lora_down.weight": torch.zeros(2, 3),
            "diffusion_model.blocks.0.mystery.lora_up.weight": torch.zeros(3, 2),
        },
        str(path),
    )
    with pytest.raises(ValueError, match=r"odd\.safetensors.*blocks\.0\.mystery"):
        load_lora_file(path)


def test_bad_layout_and_empty_modules_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="layout"):
        save_lora_file(tmp_path / "a.safetensors", _modules(), {}, "peft", torch.float32)
    with pytest.raises(ValueError, match="no LoRA modules"):
        save_lora_file(tmp_path / "a.safetensors", {}, {}, "comfyui", torch.float32)
