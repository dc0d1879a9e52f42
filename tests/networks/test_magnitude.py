"""Magnitude maths against a direct computation of ΔW."""

from __future__ import annotations

import pytest
import torch

from cadence.networks import magnitude
from cadence.networks.formats import LoraTensors as T
from cadence.networks.magnitude import block_index, delta_weight, mean_abs_delta, summarize


def _linear(out: int, inp: int, rank: int, alpha: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return T(torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g), alpha)


def test_linear_delta_matches_direct_with_alpha_not_rank() -> None:
    t = _linear(12, 9, rank=4, alpha=1.0)
    direct = (t.up.double() @ t.down.double()) * (1.0 / 4)
    assert torch.allclose(delta_weight(t).double(), direct, atol=1e-5)
    assert delta_weight(t).dtype == torch.float32
    assert mean_abs_delta(t) == pytest.approx(float(direct.abs().mean()), rel=1e-5)


def test_bf16_tensors_are_computed_in_fp32() -> None:
    t = _linear(8, 8, rank=2, alpha=2.0)
    half = T(t.down.bfloat16(), t.up.bfloat16(), t.alpha)
    direct = half.up.double() @ half.down.double()
    assert mean_abs_delta(half) == pytest.approx(float(direct.abs().mean()), rel=1e-5)


def test_conv_kernel_delta_matches_direct() -> None:
    g = torch.Generator().manual_seed(1)
    down = torch.randn(3, 5, 3, 3, generator=g)  # [rank, in, kh, kw]
    up = torch.randn(7, 3, 1, 1, generator=g)  # [out, rank, 1, 1]
    t = T(down, up, alpha=6.0)
    direct = torch.einsum("or,rihw->oihw", up[:, :, 0, 0].double(), down.double()) * (6.0 / 3)
    got = delta_weight(t)
    assert got.shape == (7, 5, 3, 3)
    assert torch.allclose(got.double(), direct, atol=1e-5)
    assert mean_abs_delta(t) == pytest.approx(float(direct.abs().mean()), rel=1e-5)


def test_chunked_mean_equals_full(monkeypatch: pytest.MonkeyPatch) -> None:
    t = _linear(37, 11, rank=5, alpha=3.0, seed=2)
    full = float(delta_weight(t).double().abs().mean())
    monkeypatch.setattr(magnitude, "_CHUNK_ELEMENTS", 20)  # forces 1-row chunks
    assert mean_abs_delta(t) == pytest.approx(full, rel=1e-6)


def test_rank_mismatch_is_reported() -> None:
    bad = T(torch.zeros(4, 8), torch.zeros(8, 3), 4.0)
    with pytest.raises(ValueError, match="disagree on rank"):
        delta_weight(bad)


def test_block_index() -> None:
    assert block_index("blocks.12.attn1.to_q") == 12
    assert block_index("diffusion_model.blocks.3.self_attn.q") == 3
    assert block_index("transformer_blocks.7.ff.net.0.proj") == 7
    assert block_index("condition_embedder.text_embedder.linear_1") is None
    assert block_index("myblocks.2.x") is None


def test_summarize_is_unweighted_mean_over_modules() -> None:
    modules = {
        "blocks.0.attn1.to_q": _linear(4, 4, 2, 2.0, seed=3),
        "blocks.0.ffn.net.0.proj": _linear(64, 4, 2, 2.0, seed=4),
        "blocks.1.attn1.to_q": _linear(4, 4, 2, 1.0, seed=5),
        "proj_out": _linear(4, 4, 2, 2.0, seed=6),
    }
    per = {k: float(((v.up @ v.down) * v.alpha / 2).abs().mean()) for k, v in modules.items()}
    s = summarize(modules)
    assert s.mean == pytest.approx(sum(per.values()) / 4, rel=1e-5)
    assert s.per_block[0] == pytest.approx((per["blocks.0.attn1.to_q"] + per["blocks.0.ffn.net.0.proj"]) / 2)
    assert s.per_block[1] == pytest.approx(per["blocks.1.attn1.to_q"], rel=1e-5)
    assert set(s.per_block) == {0, 1}
    assert s.per_module["proj_out"] == pytest.approx(per["proj_out"], rel=1e-5)
    with pytest.raises(ValueError, match="no LoRA modules"):
        summarize({})
