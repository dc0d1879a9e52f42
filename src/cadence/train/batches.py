"""Turn sampler indices into model-ready tensors from the caches.

Caption dropout happens here, at batch time, by swapping in the cached empty-caption embedding; its
random draws come from the trainer's own caption stream so resume stays exact. That one draw per item also
seeds the item's token augmentation (`data/caption_tokens.py`) and its temporal_jitter plan
(`data/augment.py`). Per-item loss weights (loss_multiplier, reg_weight) and LoRA multipliers
(network_weight) travel with the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cadence.data.augment import variant_for
from cadence.data.caption_tokens import variation_rng, vary_caption
from cadence.models.base import move_text


class LatentSource(Protocol):
    def load(self, item: Any) -> dict[str, torch.Tensor]: ...


class TextSource(Protocol):
    def load(self, caption: str) -> Any: ...  # a text embedding (cadence.models.base.TextEmbedding)


@dataclass
class Batch:
    latents: torch.Tensor  # [B, C, F', h, w] (image models: their own latent layout)
    text: Any  # what the adapter's pad_text returns (Wan: [B, text_len, D]; a dict for some families)
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    loss_weights: torch.Tensor | None = None  # [B] datasets[].loss_multiplier (x reg_weight); None: all 1
    network_weights: torch.Tensor | None = None  # [B] datasets[].network_weight; None: all 1

    @property
    def network_multiplier(self) -> float | torch.Tensor:
        """The LoRA multiplier for this batch: one number, or [B] when its items' network_weight differ."""
        weights = self.network_weights
        if weights is None:
            return 1.0
        return float(weights[0]) if bool((weights == weights[0]).all()) else weights

    def to(self, device: torch.device, dtype: torch.dtype, non_blocking: bool = False) -> Batch:
        """Text and conditioning in the model's dtype; latents stay fp32 (noised in fp32, then cast).
        `non_blocking`: latents and conditioning sit in pinned memory (train/prefetch.py), copied async."""
        return Batch(
            latents=self.latents.to(device=device, dtype=torch.float32, non_blocking=non_blocking),
            text=move_text(self.text, device, dtype),
            cond={
                k: v.to(device=device, dtype=dtype, non_blocking=non_blocking) for k, v in self.cond.items()
            },
            captions=self.captions,
            loss_weights=None if self.loss_weights is None else self.loss_weights.to(device),
            network_weights=None if self.network_weights is None else self.network_weights.to(device),
        )


class BatchAssembler:
    def __init__(
        self,
        items: list[Any],
        latents: LatentSource,
        texts: TextSource,
        pad_text: Any,
        dropout_rates: list[float],
    ) -> None:
        self.items = items
        self.latents = latents
        self.texts = texts
        self.pad_text = pad_text
        self.dropout_rates = dropout_rates  # per dataset index
        self._preloaded: tuple[tuple[Any, Any], dict[str, torch.Tensor]] | None = None  # see preload

    def caption_for(self, item: Any, draw: float | None) -> str:
        """The item's caption for this batch: dropped (""), varied (token augmentation), or as read. `draw` is
        the item's number from the caption stream (None: evaluation, the caption as read)."""
        caption = item.caption or ""
        if draw is None:
            return caption
        if draw < self.dropout_rates[item.dataset_index]:
            return ""
        variation = getattr(item, "variation", None)
        if variation is None:
            return caption
        return vary_caption(item.caption_source, variation, variation_rng(draw, 0))

    def preload(self, indices: list[int], rng_state: Any, stacked: dict[str, torch.Tensor]) -> None:
        """The next `assemble` of exactly these indices, from a caption stream in exactly this state, uses
        `stacked` (read ahead by train/prefetch.py) instead of reading the cache entries itself."""
        self._preloaded = ((tuple(indices), rng_state), stacked)

    def assemble(self, indices: list[int], rng: random.Random | None) -> Batch:
        items = [self.items[i] for i in indices]
        preloaded, self._preloaded = self._preloaded, None
        stacked = None
        if preloaded is not None and rng is not None and preloaded[0] == (tuple(indices), rng.getstate()):
            stacked = preloaded[1]
        # Always one draw per item, so the stream position does not depend on the captions or the rates.
        draws = [rng.random() if rng is not None else None for _ in items]
        captions = [self.caption_for(item, draw) for item, draw in zip(items, draws, strict=True)]
        if stacked is None:
            stacked = self.load_latents(items, draws)
        latents = stacked["latents"]
        cond = {k: v for k, v in stacked.items() if k != "latents"}
        text = self.pad_text([self.texts.load(c) for c in captions])
        return Batch(
            latents=latents,
            text=text,
            cond=cond,
            captions=captions,
            loss_weights=_weights([getattr(item, "loss_weight", 1.0) for item in items]),
            network_weights=_weights([getattr(item, "network_weight", 1.0) for item in items]),
        )

    def load_latents(
        self, items: list[Any], draws: list[float | None], pin: bool = False
    ) -> dict[str, torch.Tensor]:
        """{"latents": [B, ...], conditioning keys: [B, ...]} of the items' cache entries (the variant each
        draw picks), stacked; `pin`: into pinned host memory, for an asynchronous copy to the GPU."""
        entries = [
            self.latents.load(variant_for(item, draw)) for item, draw in zip(items, draws, strict=True)
        ]
        keys = ["latents", *sorted(k for k in entries[0] if k != "latents")]
        out = {}
        for key in keys:
            parts = [entry[key] for entry in entries]
            if pin:
                target = torch.empty((len(parts), *parts[0].shape), dtype=parts[0].dtype, pin_memory=True)
                out[key] = torch.stack(parts, out=target)
            else:
                out[key] = torch.stack(parts)
        return out


def _weights(values: list[float]) -> torch.Tensor | None:
    """[B] float32, or None when every value is 1 (the batch then trains exactly as without the keys)."""
    if all(value == 1.0 for value in values):
        return None
    return torch.tensor(values, dtype=torch.float32)
