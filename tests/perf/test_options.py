"""The two calls train setup makes: apply_quantization and apply_memory_options on a loaded tiny adapter."""

from __future__ import annotations

import torch

from cadence.config.schema import JobConfig
from cadence.models.registry import load_model_adapter
from cadence.networks.lora import LoRANetwork
from cadence.perf import Fp8Linear, apply_memory_options, apply_quantization
from cadence.perf.attention import attention_backends_of


def _cfg(folder, **train) -> JobConfig:
    return JobConfig.model_validate(
        {
            "name": "perf",
            "model": {
                "name_or_path": str(folder),
                "arch": "wan22_14b_i2v",
                "quantize": True,
                "qtype": "fp8",
                "quantize_te": True,
                "qtype_te": "fp8",
                "blocks_to_swap": 1,
            },
            "train": {"gradient_checkpointing": 2, "adapter_dtype": "bf16", **train},
        }
    )


def test_apply_options_on_adapter(tiny_folder):
    cfg = _cfg(tiny_folder)
    adapter = load_model_adapter(cfg.model, torch.device("cpu"), torch.float32)
    apply_quantization(adapter, cfg.model)
    for expert in ("high_noise", "low_noise"):
        assert isinstance(adapter.transformer(expert).blocks[0].ffn.net[2], Fp8Linear)
    assert any(isinstance(m, Fp8Linear) for m in adapter.components["text_encoder"].modules())
    networks = {
        "low_noise": LoRANetwork(adapter.transformer("low_noise"), cfg.network, name="low_noise").apply()
    }
    state = apply_memory_options(adapter, cfg, ["low_noise"], networks)
    assert state.checkpointed == {"low_noise": [0]} and set(state.swappers) == {"low_noise"}
    assert networks["low_noise"].trainable_parameters()[0].dtype == torch.bfloat16
    assert attention_backends_of(adapter.transformer("high_noise")) == {"native"}
    noisy, cond = torch.randn(1, 16, 3, 8, 8), {"condition": torch.randn(1, 20, 3, 8, 8)}
    out = adapter.predict("low_noise", noisy, torch.tensor([0.3]), torch.randn(1, 512, 32), cond)
    out.float().pow(2).mean().backward()
    assert networks["low_noise"].trainable_parameters()[0].grad is not None
    assert state.swappers["low_noise"].stats()[1]["loads"] == 1  # block 1 is not checkpointed (every 2nd)
