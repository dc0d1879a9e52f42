"""`qtype: "uint4|FILE"`: an accuracy-recovery adapter in ai-toolkit's layout over the uint4 base.

The adapter written here is a real recovery adapter for the tiny model: per layer, the best rank-r
approximation (SVD) of what uint4 quantization removed from that expert's weight. If the file were read
with the wrong key layout, expert mapping or scale, the quantized model would not move back toward the
full-precision one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cadence.config.schema import ModelConfig
from cadence.models import wan_memory
from cadence.models.registry import load_model_adapter
from cadence.networks import keymap
from cadence.networks.recovery import resolve_adapter_file
from cadence.perf import apply_quantization
from cadence.perf.uint4 import dequantize_uint4, quantize_uint4

RANK = 24  # the tiny model is 24 wide: the adapter can hold the whole quantization error


def write_recovery_file(folder: Path, path: Path, skip_first_block_q: bool = False) -> None:
    """ai-toolkit's combined layout: diffusion_model.transformer_{1,2}.<original name>.lora_A/B (+ alpha)."""
    cfg = ModelConfig(name_or_path=str(folder), arch="wan22_14b_i2v")
    adapter = load_model_adapter(cfg, torch.device("cpu"), torch.float32)
    tensors = {}
    for index, spec in enumerate(adapter.experts, start=1):
        for name, linear in wan_memory.quantizable_linears(adapter.transformer(spec.name)).items():
            if skip_first_block_q and name == "blocks.0.attn1.to_q":
                continue
            weight = linear.weight.detach()
            error = weight - dequantize_uint4(*quantize_uint4(weight), torch.float32)
            u, s, vh = torch.linalg.svd(error, full_matrices=False)
            stem = f"diffusion_model.transformer_{index}.{keymap.to_original(name)}"
            tensors[f"{stem}.lora_A.weight"] = (vh[:RANK] * s[:RANK, None]).contiguous()
            tensors[f"{stem}.lora_B.weight"] = u[:, :RANK].contiguous()
            tensors[f"{stem}.alpha"] = torch.tensor(1.0)  # ignored: ai-toolkit applies ARAs at scale 1
    save_file(tensors, str(path))


def outputs(adapter) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    noisy, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 16, 32, generator=g)
    cond = {"condition": torch.randn(1, 20, 3, 8, 8, generator=g)}
    with torch.no_grad():
        return {
            s.name: adapter.predict(s.name, noisy, torch.tensor([0.5]), text, cond) for s in adapter.experts
        }


def load(folder: Path, qtype: str | None):
    cfg = ModelConfig(
        name_or_path=str(folder), arch="wan22_14b_i2v", quantize=qtype is not None, qtype=qtype or "fp8"
    )
    adapter = load_model_adapter(cfg, torch.device("cpu"), torch.float32)
    apply_quantization(adapter, cfg)
    return adapter


def test_recovery_adapter_brings_uint4_back_toward_full_precision(tiny_folder, tmp_path):
    path = tmp_path / "wan_uint4_ara.safetensors"
    write_recovery_file(tiny_folder, path)
    full = outputs(load(tiny_folder, None))
    plain = outputs(load(tiny_folder, "uint4"))
    recovered_adapter = load(tiny_folder, f"uint4|{path}")
    recovered = outputs(recovered_adapter)
    for expert in full:
        before = float((plain[expert] - full[expert]).norm() / full[expert].norm())
        after = float((recovered[expert] - full[expert]).norm() / full[expert].norm())
        assert before > 1e-3 and after < 0.01 * before, (expert, before, after)
    nets = recovered_adapter.recovery_adapters
    assert set(nets) == {"high_noise", "low_noise"}
    assert all(not p.requires_grad for n in nets.values() for p in n.parameters())
    assert all(m.alpha == RANK for n in nets.values() for m in n.modules_by_name.values())


def test_only_the_layers_the_adapter_names_are_quantized(tiny_folder, tmp_path):
    path = tmp_path / "partial.safetensors"
    write_recovery_file(tiny_folder, path, skip_first_block_q=True)
    adapter = load(tiny_folder, f"uint4|{path}")
    for spec in adapter.experts:
        blocks = adapter.transformer(spec.name).blocks
        assert type(blocks[0].attn1.to_q) is torch.nn.Linear  # not in the file: full precision
        assert type(blocks[0].attn1.to_k).__name__ == "Uint4Linear"


def test_adapter_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download ostris/ara wan.safetensors"):
        resolve_adapter_file("ostris/ara/wan.safetensors")  # the test session is offline
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_adapter_file(str(tmp_path / "missing.safetensors"))
    single = tmp_path / "no_expert.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 24)}, str(single))
    from cadence.networks.recovery import read_recovery_adapter

    with pytest.raises(ValueError, match="does not say which expert"):
        read_recovery_adapter(single, ["high_noise", "low_noise"])
