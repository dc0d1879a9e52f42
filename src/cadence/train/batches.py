"""Turn sampler indices into model-ready tensors from the caches.

Caption dropout happens here, at batch time, by swapping in the cached empty-caption embedding; its
random draws come from the trainer's own caption stream so resume stays exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class LatentSource(Protocol):
    def load(self, item: Any) -> dict[str, torch.Tensor]: ...


class TextSource(Protocol):
    def load(self, caption: str) -> torch.Tensor: ...


@dataclass
class Batch:
    latents: torch.Tensor  # [B, C, F', h, w]
    text: torch.Tensor  # [B, text_len, D]
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        """Text and conditioning in the model's dtype; latents stay fp32 (noised in fp32, then cast)."""
        return Batch(
            latents=self.latents.to(device=device, dtype=torch.float32),
            text=self.text.to(device=device, dtype=dtype),
            cond={k: v.to(device=device, dtype=dtype) for k, v in self.cond.items()},
            captions=self.captions,
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

    def caption_for(self, item: Any, rng: random.Random) -> str:
        caption = item.caption or ""
        rate = self.dropout_rates[item.dataset_index]
        # Always draw, so the stream position does not depend on the caption text.
        dropped = rng.random() < rate
        return "" if dropped else caption

    def assemble(self, indices: list[int], rng: random.Random | None) -> Batch:
        items = [self.items[i] for i in indices]
        captions = [
            self.caption_for(item, rng) if rng is not None else (item.caption or "") for item in items
        ]
        entries = [self.latents.load(item) for item in items]
        latents = torch.stack([entry["latents"] for entry in entries])
        cond_keys = sorted(k for k in entries[0] if k != "latents")
        cond = {k: torch.stack([entry[k] for entry in entries]) for k in cond_keys}
        text = self.pad_text([self.texts.load(c) for c in captions])
        return Batch(latents=latents, text=text, cond=cond, captions=captions)
