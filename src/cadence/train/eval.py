"""Held-out loss at fixed timesteps and fixed noise: a number comparable across steps and runs.

For every expert, t is placed at fixed quantiles of the training timestep distribution restricted to the
expert's range; noise is drawn once per item from a dedicated generator; captions are used without
dropout. Evaluation runs with adapters in eval mode (no LoRA dropout) under no_grad and never touches the
training random streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cadence.models.base import ExpertSpec, ModelAdapter
from cadence.schedule.timesteps import TimestepSampler
from cadence.train.batches import BatchAssembler
from cadence.train.objective import flow_matching_loss, model_input_and_target

DEFAULT_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)


def quantile_timesteps(sampler: TimestepSampler, spec: ExpertSpec, quantiles: Sequence[float]) -> list[float]:
    """t at each quantile of the sampling distribution conditioned on the expert's range (cut, as in
    training, to train.min/max_denoising_steps)."""
    edges = sampler.cdf(torch.tensor(sampler.expert_range(spec.t_low, spec.t_high), dtype=torch.float64))
    u = edges[0] + (edges[1] - edges[0]) * torch.tensor(list(quantiles), dtype=torch.float64)
    return [float(t) for t in sampler.icdf(u)]


class FixedEval:
    def __init__(
        self,
        item_indices: list[int],
        batches: BatchAssembler,
        specs: Sequence[ExpertSpec],
        sampler: TimestepSampler,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        seed: int = 20251123,
    ) -> None:
        self.item_indices = item_indices
        self.batches = batches
        self.specs = list(specs)
        self.quantiles = list(quantiles)
        self.t_values = {spec.name: quantile_timesteps(sampler, spec, quantiles) for spec in self.specs}
        generator = torch.Generator().manual_seed(seed)
        self._noise: dict[int, torch.Tensor] = {}
        for index in item_indices:
            shape = batches.assemble([index], None).latents.shape
            self._noise[index] = torch.randn(shape, generator=generator)

    @torch.no_grad()
    def evaluate(
        self, adapter: ModelAdapter, device: torch.device, dtype: torch.dtype, label: Any = lambda name: name
    ) -> dict[str, float]:
        """Mean loss per expert and quantile; keys eval_loss, eval_loss_{expert}, eval_loss_{expert}_q{NN}."""
        results: dict[str, float] = {}
        per_expert: list[float] = []
        for spec in self.specs:
            transformer = adapter.transformer(spec.name)
            was_training = transformer.training
            transformer.eval()
            try:
                losses = self._expert_losses(adapter, spec, device, dtype)
            finally:
                transformer.train(was_training)
            suffix = f"_{label(spec.name)}" if label(spec.name) else ""
            for q, value in zip(self.quantiles, losses, strict=True):
                results[f"eval_loss{suffix}_q{round(q * 100):02d}"] = value
            mean = sum(losses) / len(losses)
            results[f"eval_loss{suffix}"] = mean
            per_expert.append(mean)
        if len(self.specs) > 1:
            results["eval_loss"] = sum(per_expert) / len(per_expert)
        return results

    def _expert_losses(
        self, adapter: ModelAdapter, spec: ExpertSpec, device: torch.device, dtype: torch.dtype
    ) -> list[float]:
        losses = []
        for t_value in self.t_values[spec.name]:
            total = 0.0
            for index in self.item_indices:
                batch = self.batches.assemble([index], None).to(device, dtype)
                t = torch.full((1,), t_value, dtype=torch.float32, device=device)
                noisy, target = model_input_and_target(batch.latents, self._noise[index].to(device), t, dtype)
                prediction = adapter.predict(spec.name, noisy, t, batch.text, batch.cond)
                total += float(flow_matching_loss(prediction, target, adapter.loss_mask(batch.cond)))
            losses.append(total / len(self.item_indices))
        return losses
