"""The trainer's tail (issue 23): |ΔW| batched over modules equals the per-module definition for every adapter
type, and the probe re-reads only an expert whose weights changed since its last probe."""

from __future__ import annotations

import pytest
import torch

from cadence.config.schema import NetworkConfig
from cadence.models.tiny import build_tiny_pipeline
from cadence.networks.lora import LoRANetwork
from cadence.networks.magnitude import summarize
from cadence.train.metrics_hub import MetricsHub

NETWORKS = {
    "lora": {"linear": 4, "linear_alpha": 2},
    "locon": {"type": "locon", "linear": 4, "network_kwargs": {"include_patterns": ["patch_embedding"]}},
    "lokr": {"type": "lokr", "lokr_full_rank": False, "linear": 4, "linear_alpha": 4},
    "loha": {"type": "loha", "linear": 4, "linear_alpha": 2},
    "dora": {"type": "dora", "linear": 4, "linear_alpha": 4},
}


def _trained(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> LoRANetwork:
    """A network on a tiny Wan transformer whose factors all hold random values (as if trained)."""
    transformer = build_tiny_pipeline("wan22_14b_i2v", seed=0).transformer
    net = LoRANetwork(transformer, NetworkConfig(**NETWORKS[kind]), name="high_noise", seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 2 and p.shape[0] == 1 else 0)
            )
    net.to(dtype)
    return net.apply()


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_batched_means_equal_each_modules_own_delta_for_every_adapter_type(kind: str) -> None:
    net = _trained(kind)
    modules = net.to_lora_tensors()
    summary = summarize(modules)
    assert len(modules) >= 20 and set(summary.per_module) == set(modules)
    for name, t in modules.items():  # the definition: each module's real ΔW, materialised alone
        expected = float(t.diff_weight().abs().mean(dtype=torch.float64))
        assert expected > 0 and summary.per_module[name] == pytest.approx(expected, rel=1e-6), name
    if kind == "locon":
        assert any(t.is_conv for t in modules.values())  # a conv kernel among the batched LoRA shapes


def test_bf16_factors_are_multiplied_in_fp32() -> None:
    modules = _trained("lora", seed=3, dtype=torch.bfloat16).to_lora_tensors()
    summary = summarize(modules)
    for name, t in modules.items():
        up, down = t.up.double(), t.down.double()
        expected = float((up @ down).abs().mean()) * t.scale
        assert summary.per_module[name] == pytest.approx(expected, rel=1e-6)


def test_probe_re_reads_only_an_expert_whose_weights_changed() -> None:
    nets = {"high_noise": _trained("lora", seed=1), "low_noise": _trained("lora", seed=2)}
    hub = MetricsHub(nets, ("high_noise", "low_noise"), 20, None, magnitude_every=1)
    first = hub.magnitudes()
    with torch.no_grad():
        for p in nets["high_noise"].parameters():
            p.mul_(1.5)
    assert hub.magnitudes() == first  # no update was reported: the probe trusts it has not moved
    hub.observe(1, "high_noise", loss=0.1, grad_norm=0.2)  # the high-noise expert stepped
    second = hub.magnitudes()
    assert second["low_noise"] is first["low_noise"]  # idle since its probe: not read again
    assert second["high_noise"].mean == pytest.approx(1.5**2 * first["high_noise"].mean, rel=1e-6)
    hub.observe(2, "low_noise", loss=None, grad_norm=None)  # a skipped step changes nothing
    assert hub.magnitudes()["low_noise"] is first["low_noise"]
    nets["low_noise"].set_alpha(linear=1.0)  # alpha scales |ΔW|: measured again
    third = hub.magnitudes()
    assert third["low_noise"].mean == pytest.approx(first["low_noise"].mean / 2, rel=1e-6)
    assert third["high_noise"] is second["high_noise"]
    fields = hub.magnitude_fields()
    assert fields["weight_ratio"] == pytest.approx(third["high_noise"].mean / third["low_noise"].mean)
