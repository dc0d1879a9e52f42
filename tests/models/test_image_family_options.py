"""Speed and memory options on the image families, through the family's memory layout (block lists in execution
order, quantizable Linears): checkpointing + block swap train bit-identically, regional compile matches, and the
quantized bases (fp8, uint4, qint8) train within a small distance of the full-precision one."""

from __future__ import annotations

import math

import pytest
import torch

from cadence.config.schema import ModelConfig, NetworkConfig
from cadence.models import load_model_adapter
from cadence.models.registry import family_of
from cadence.networks.lora import LoRANetwork
from cadence.perf import BlockSwapper, compile_blocks, enable_checkpointing, quantize_linears

CPU = torch.device("cpu")
ARCHS = ("flux", "qwen_image", "zimage")


def _train(adapter, steps: int = 3) -> tuple[list[float], dict[str, torch.Tensor]]:
    """A few LoRA steps on fixed inputs through adapter.predict (what the training loop calls)."""
    torch.manual_seed(0)
    net = LoRANetwork(
        adapter.transformer("main"), NetworkConfig(linear=4, linear_alpha=4), name="main", seed=1
    )
    net.apply()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    text = adapter.pad_text(adapter.encode_prompts(["a red car", "a dog"]))
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 16, 4, 6, generator=gen), torch.randn(2, 16, 4, 6, generator=gen)
    t = torch.tensor([0.3, 0.8])
    noisy = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((adapter.predict("main", noisy, t, text, {}) - (noise - x0)) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in net.state_dict().items()}


def _load(tiny_dirs, arch: str):
    adapter = load_model_adapter(
        ModelConfig(name_or_path=str(tiny_dirs(arch)), arch=arch), CPU, torch.float32
    )
    adapter.transformer("main").train()
    return adapter


@pytest.mark.parametrize("arch", ("flux", "zimage"))  # two and three block lists
def test_block_swap_and_checkpointing_over_every_block_list_train_identically(tiny_dirs, arch):
    family = family_of(arch)
    baseline = _train(_load(tiny_dirs, arch))
    adapter = _load(tiny_dirs, arch)
    transformer = adapter.transformer("main")
    blocks = family.transformer_blocks(transformer)
    assert len(blocks) == sum(len(getattr(transformer, name)) for name in family.block_lists) > 1
    assert enable_checkpointing(transformer, blocks, True) == list(range(len(blocks)))
    swapper = BlockSwapper(blocks, 1, CPU)
    losses, weights = _train(adapter)
    assert losses == baseline[0] and all(torch.equal(weights[k], baseline[1][k]) for k in weights)
    assert (
        swapper.stats()[len(blocks) - 1]["loads"] == 6
    )  # the last block (a single/main one): fwd + recompute


@pytest.mark.slow
@pytest.mark.parametrize("arch", ("flux",))
def test_regional_compile_of_every_block_list_matches(tiny_dirs, arch):
    baseline = _train(_load(tiny_dirs, arch), steps=2)
    adapter = _load(tiny_dirs, arch)
    torch._dynamo.reset()
    compile_blocks(family_of(arch).transformer_blocks(adapter.transformer("main")), 8, backend="aot_eager")
    losses, weights = _train(adapter, steps=2)
    torch._dynamo.reset()
    assert losses == pytest.approx(baseline[0], rel=1e-5)
    assert all(torch.allclose(weights[k], baseline[1][k], rtol=1e-4, atol=1e-6) for k in weights)


@pytest.mark.parametrize(
    ("arch", "qtype"),
    [("flux", "fp8"), ("flux", "uint4"), ("flux", "qint8"), ("qwen_image", "qint8"), ("zimage", "uint4")],
)
def test_quantized_block_linears_train_close_to_full_precision(tiny_dirs, arch, qtype):
    family = family_of(arch)
    baseline = _train(_load(tiny_dirs, arch))
    adapter = _load(tiny_dirs, arch)
    transformer = adapter.transformer("main")
    linears = family.quantizable_linears(transformer)
    assert linears and not any(family.keep_high_precision(n) for n in linears)
    assert all(n.startswith(family.block_prefixes()) for n in linears)
    quantize_linears(transformer, linears, qtype)
    losses, weights = _train(adapter)
    assert losses[0] == pytest.approx(baseline[0][0], rel=0.1) and losses[0] != baseline[0][0]
    assert all(torch.isfinite(w).all() for w in weights.values()) and all(map(math.isfinite, losses))
    moved = [float((weights[k] - baseline[1][k]).abs().max()) for k in weights if k.endswith(".up")]
    assert max(moved) > 0  # the adapters trained on the quantized base (and not exactly as on the full one)
