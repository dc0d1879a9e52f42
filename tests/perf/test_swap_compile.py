"""Block swap and regional compile train the tiny A14B transformer exactly like the plain run."""

from __future__ import annotations

import pytest
import torch
from tests.perf.conftest import make_network, train

from cadence.models import wan_memory
from cadence.perf import BlockSwapper, compile_blocks, enable_checkpointing


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_block_swap_trains_identically(load_transformer, baseline, checkpointing):
    model = load_transformer()
    net = make_network(model)
    blocks = wan_memory.transformer_blocks(model)
    enable_checkpointing(model, blocks, checkpointing)
    swapper = BlockSwapper(blocks, 1, torch.device("cpu"))
    ran_resident: list[bool] = []
    blocks[1].register_forward_pre_hook(lambda *_: ran_resident.append(1 in swapper.resident))
    losses, weights = train(model, net, steps=3)
    assert losses == baseline[0] and _equal(weights, baseline[1])
    assert ran_resident and all(ran_resident)  # the swapped block was always loaded when it ran
    # checkpointed: loaded for the forward and again for the recompute in backward; plain: once per step
    assert swapper.stats()[1]["loads"] == (6 if checkpointing else 3)
    assert swapper.max_resident == 1
    swapper.offload_all()
    assert swapper.resident == set()


def test_block_swap_no_grad_offloads_after_use(load_transformer):
    model = load_transformer()
    swapper = BlockSwapper(wan_memory.transformer_blocks(model), 1, torch.device("cpu"))
    with torch.no_grad():
        model(
            hidden_states=torch.randn(1, 36, 1, 4, 4),
            timestep=torch.tensor([10.0]),
            encoder_hidden_states=torch.randn(1, 4, 32),
            return_dict=False,
        )
    assert swapper.resident == set() and swapper.stats()[1] == {"loads": 1, "offloads": 1}
    with pytest.raises(ValueError, match="blocks_to_swap"):
        BlockSwapper(wan_memory.transformer_blocks(model), 2, torch.device("cpu"))


def test_regional_compile_after_lora_matches(load_transformer, baseline):
    model = load_transformer()
    net = make_network(model)  # attach first: the hooks are traced into each compiled block
    blocks = wan_memory.transformer_blocks(model)
    compile_blocks(blocks, cache_size_limit=8, backend="aot_eager")
    assert torch._dynamo.config.cache_size_limit == 8
    torch._dynamo.reset()
    losses, weights = train(model, net)
    assert losses == pytest.approx(baseline[0], rel=1e-5)
    assert all(torch.allclose(weights[k], baseline[1][k], rtol=1e-4, atol=1e-6) for k in weights)
    net.multiplier = 0.0  # a hook change after compiling is still honoured (dynamo guards on it)
    b = torch.randn(1, 36, 3, 8, 8)
    kwargs = {
        "timestep": torch.tensor([5.0]),
        "encoder_hidden_states": torch.zeros(1, 16, 32),
        "return_dict": False,
    }
    with torch.no_grad():
        off = model(hidden_states=b, **kwargs)[0]
        net.multiplier = 1.0
        on = model(hidden_states=b, **kwargs)[0]
    assert not torch.allclose(off, on)
