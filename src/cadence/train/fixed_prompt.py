"""`train.unload_text_encoder`: ai-toolkit's trigger-word training, with the text encoder freed.

ai-toolkit (SDTrainer, 27a03a91) encodes the trigger word (a blank prompt when there is none) and the sample
prompts once, moves the text encoder off the GPU, and conditions every training item on that one embedding:
captions are not read and caption dropout has no effect. When captions are cached to disk as well
(`cache_text_embeddings`), the cached captions win and are trained on. Cadence does the same: every item's
caption becomes the trigger word (or "") before the text cache is filled, so the encoder runs on one prompt
plus the sample prompts and is then freed; with `cache_text_embeddings: true` the captions are kept.
"""

from __future__ import annotations

import dataclasses
import logging

from cadence.config.schema import JobConfig
from cadence.data.dataset import DatasetIndex

log = logging.getLogger(__name__)


def fixed_prompt(cfg: JobConfig) -> str | None:
    """The one prompt every item trains on (the trigger word, else ""), or None when captions are used."""
    if not cfg.train.unload_text_encoder or cfg.train.cache_text_embeddings:
        return None
    return cfg.trigger_word or ""


def use_fixed_prompt(index: DatasetIndex, prompt: str) -> None:
    """Give every item of `index` the caption `prompt` (and no caption dropout), saying what is not read."""
    own = sum(1 for item in index.items if item.caption and item.caption != prompt)

    def fixed(items: list) -> list:  # regularisation items train on the blank prompt, as in ai-toolkit
        return [
            dataclasses.replace(item, caption="" if item.is_reg else prompt, caption_dropout_rate=0.0)
            for item in items
        ]

    index.train_items, index.eval_items = fixed(index.train_items), fixed(index.eval_items)
    shown = f"the trigger word {prompt!r}" if prompt else "a blank prompt (no trigger_word is set)"
    log.warning(
        "train.unload_text_encoder: every item trains on %s, as in ai-toolkit; the captions of %d item(s) are not "
        "read. Set train.cache_text_embeddings: true to train on the captions with the text encoder freed",
        shown,
        own,
    )


def needs_text_encoder_freed(cfg: JobConfig) -> bool:
    """Free the text encoder once the text cache is filled (cached captions, or the one fixed prompt)."""
    return cfg.train.cache_text_embeddings or cfg.train.unload_text_encoder
