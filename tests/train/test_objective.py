"""The flow-matching pair is mixed in fp32 whatever the model dtype."""

from __future__ import annotations

import torch

from cadence.train.objective import model_input_and_target, noisy_latents, velocity_target


def test_bf16_model_input_is_noised_at_the_t_the_model_is_told():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 3, 4, 4, generator=g) * 3, torch.randn(2, 16, 3, 4, 4, generator=g)
    t = torch.tensor([0.999, 0.975])
    noisy, target = model_input_and_target(x0.bfloat16(), noise, t, torch.bfloat16)
    exact = noisy_latents(x0.bfloat16().float(), noise, t)
    assert noisy.dtype == torch.bfloat16 and target.dtype == torch.float32
    assert torch.equal(noisy, exact.bfloat16())  # one rounding, at the end
    rounded = noisy_latents(x0.bfloat16(), noise.bfloat16(), t.bfloat16())  # mixing in bf16 (the old way)
    assert torch.equal(rounded[0], noise.bfloat16()[0])  # t = 0.999 rounds to 1: pure noise
    assert not torch.equal(noisy[0], noise.bfloat16()[0])
    torch.testing.assert_close(target, velocity_target(x0.bfloat16().float(), noise))
