"""Attention backend selection and every-N-block gradient checkpointing on the tiny A14B transformer."""

from __future__ import annotations

import pytest
import torch
from tests.perf.conftest import make_network, train
from torch.utils._python_dispatch import TorchDispatchMode

from cadence.models import wan_memory
from cadence.perf import AttentionBackendError, apply_attention_backend, compile_blocks, enable_checkpointing
from cadence.perf.attention import attention_backends_of
from cadence.perf.checkpointing import _SDPA_KERNELS, checkpointed_indices, keep_attention_indices, phase


def test_native_backend_set_on_every_expert_and_training_unchanged(load_transformer, baseline):
    experts = [load_transformer(), load_transformer()]
    apply_attention_backend(experts, "native")
    for model in experts:
        assert attention_backends_of(model) == {"native"}
    losses, weights = train(experts[0], make_network(experts[0]))
    assert losses == baseline[0]
    assert all(torch.equal(weights[k], baseline[1][k]) for k in weights)


@pytest.mark.parametrize(
    ("backend", "needle"),
    [
        ("sage", "no backward pass"),
        ("flash", "flash-attn"),
        ("flash3", "FlashAttention 3"),
        ("xformers", "unknown"),
    ],
)
def test_unusable_backends_refused(load_transformer, backend, needle):
    with pytest.raises(AttentionBackendError, match="train.attention_backend") as err:
        apply_attention_backend([load_transformer()], backend)
    assert needle in str(err.value)


def test_cuda_only_backend_refused_on_cpu(load_transformer):
    with pytest.raises(AttentionBackendError, match="'cudnn' runs only on CUDA"):
        apply_attention_backend([load_transformer()], "cudnn", torch.device("cpu"))


def test_a14b_timestep_not_expanded_per_token(tiny_folder):
    """Only TI2V-5B passes a per-token timestep; A14B's modulation stays [B, 6, dim]."""
    from cadence.config.schema import ModelConfig
    from cadence.models.registry import load_model_adapter

    adapter = load_model_adapter(
        ModelConfig(name_or_path=str(tiny_folder), arch="wan22_14b_i2v"), torch.device("cpu"), torch.float32
    )
    seen = []
    model = adapter.transformer("low_noise")
    model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[2].shape)))
    noisy = torch.randn(1, 16, 3, 8, 8)
    cond = {"condition": torch.randn(1, 20, 3, 8, 8)}
    with torch.no_grad():
        adapter.predict("low_noise", noisy, torch.tensor([0.5]), torch.randn(1, 512, 32), cond)
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    assert seen == [(1, 6, dim)]
    assert not wan_memory.expands_timestep_per_token(
        "wan22_14b_i2v"
    ) and wan_memory.expands_timestep_per_token("wan22_5b")


def test_checkpoint_indices():
    assert checkpointed_indices(5, True) == [0, 1, 2, 3, 4]
    assert checkpointed_indices(5, 2) == [0, 2, 4]
    assert checkpointed_indices(5, False) == []
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        checkpointed_indices(5, 0)


@pytest.mark.parametrize("every", [True, 2])
def test_checkpointing_every_n_trains_identically(load_transformer, baseline, every):
    model = load_transformer()
    net = make_network(model)
    blocks = wan_memory.transformer_blocks(model)
    indices = enable_checkpointing(model, blocks, every)
    phases: list[tuple[int, str]] = []
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda _m, _a, i=i: phases.append((i, phase())))
    losses, weights = train(model, net)
    assert indices == ([0, 1] if every is True else [0])
    # checkpointed blocks run twice per step (first pass + recompute in backward), the others once
    step = phases[: len(phases) // 3]
    assert sorted(step) == sorted(
        [(i, "forward") for i in indices]
        + [(i, "recompute") for i in indices]
        + [(i, "plain") for i in range(len(blocks)) if i not in indices]
    )
    assert losses == pytest.approx(baseline[0], rel=1e-6)
    assert all(torch.allclose(weights[k], baseline[1][k], rtol=1e-5, atol=1e-7) for k in weights)


def test_checkpoint_offload_trains_identically_and_sends_saved_inputs_to_host(load_transformer, baseline):
    model = load_transformer()
    net = make_network(model)
    blocks = wan_memory.transformer_blocks(model)
    enable_checkpointing(model, blocks, True, offload=True)
    packed: list[torch.device] = []
    original = torch.autograd.graph.save_on_cpu.__init__

    def spy(self, pin_memory=False, device_type="cuda"):
        original(self, pin_memory, device_type)
        pack = self.pack_hook
        self.pack_hook = lambda t: packed.append(t.device) or pack(t)

    torch.autograd.graph.save_on_cpu.__init__ = spy
    try:
        losses, weights = train(model, net)
    finally:
        torch.autograd.graph.save_on_cpu.__init__ = original
    assert losses == baseline[0] and all(torch.equal(weights[k], baseline[1][k]) for k in weights)
    assert packed  # the checkpoints' saved inputs went through the host-offload hooks
    with pytest.raises(ValueError, match="gradient_checkpointing_offload needs"):
        enable_checkpointing(load_transformer(), blocks, False, offload=True)


class _CountAttention(TorchDispatchMode):
    """Counts SDPA kernel executions, self- and cross-attention apart (a cached result is not one)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"self": 0, "cross": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SDPA_KERNELS:
            self.calls["self" if args[0].shape[-2] == args[1].shape[-2] else "cross"] += 1
        return func(*args, **(kwargs or {}))


def test_keep_attention_skips_the_self_attention_recompute_and_trains_identically(load_transformer, baseline):
    model = load_transformer()
    net = make_network(model)
    enable_checkpointing(model, wan_memory.transformer_blocks(model), True, keep_attention=True)
    with _CountAttention() as counter:
        losses, weights = train(model, net)
    assert losses == baseline[0] and all(torch.equal(weights[k], baseline[1][k]) for k in weights)
    # 2 blocks x 3 steps: self-attention once per block (its recompute is served from the saved output),
    # cross-attention twice (first pass + recompute)
    assert counter.calls == {"self": 6, "cross": 12}


def test_keep_attention_in_the_first_k_blocks_only(load_transformer, baseline):
    model = load_transformer()
    net = make_network(model)
    blocks = wan_memory.transformer_blocks(model)
    enable_checkpointing(model, blocks, True, keep_attention=1)
    with _CountAttention() as counter:
        losses, weights = train(model, net)
    assert losses == baseline[0] and all(torch.equal(weights[k], baseline[1][k]) for k in weights)
    # 3 steps: block 0 runs self-attention once (kept), block 1 twice (first pass + recompute)
    assert counter.calls == {"self": 9, "cross": 12}
    assert keep_attention_indices([0, 2, 4], 2) == [0, 2]
    assert keep_attention_indices([0, 2], 5) == [0, 2] and keep_attention_indices([0, 2], False) == []
    with pytest.raises(ValueError, match="block count must be >= 1"):
        keep_attention_indices([0], 0)


def test_keep_attention_under_compile(load_transformer, baseline, monkeypatch):
    """Counted through the policy (a dispatch mode would stop dynamo from compiling at all)."""
    from torch._dynamo.utils import counters

    from cadence.perf import checkpointing

    decisions: list[tuple[bool, str]] = []
    policy = checkpointing._keep_self_attention

    def counting(ctx, op, *args, **kwargs):
        decision = policy(ctx, op, *args, **kwargs)
        if op in _SDPA_KERNELS:
            decisions.append((ctx.is_recompute, decision.name))
        return decision

    monkeypatch.setattr(checkpointing, "_keep_self_attention", counting)
    model = load_transformer()
    net = make_network(model)
    blocks = wan_memory.transformer_blocks(model)
    enable_checkpointing(model, blocks, True, keep_attention=True)
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(blocks, 8, backend="aot_eager")
    losses, weights = train(model, net)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled the blocks
    assert losses == pytest.approx(baseline[0], rel=1e-5)
    assert all(torch.allclose(weights[k], baseline[1][k], rtol=1e-4, atol=1e-6) for k in weights)
    # the first pass saved self-attention once per block and step (the recompute's reuse of it is counted in
    # the eager test above: a dispatch-mode counter would keep dynamo from compiling here)
    assert decisions.count((False, "MUST_SAVE")) == 6
