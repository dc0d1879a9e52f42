"""Caption token augmentation at batch time: ai-toolkit's `shuffle_tokens`, `token_dropout_rate`, `keep_tokens`.

ai-toolkit (`toolkit/dataloader_mixins.py`, `CaptionProcessingDTOMixin.get_caption`) splits the caption at
commas into tokens, drops each token at index >= `keep_tokens` with probability `token_dropout_rate`, shuffles
the tokens (`shuffle_tokens`), joins them with ", ", then puts the trigger word in (`[trigger]` replaced, else
prepended, except for regularisation sets) and, with `shuffle_tokens`, shuffles once more - so the trigger word
moves too, glued to the token it was prepended to. `keep_tokens` protects tokens from dropout only; the
shuffle moves them as well. Cadence does exactly that, with two differences of form: tokens are stripped and
empty ones dropped in both passes (the relaxis fork does so in the second one; Wan's prompt cleaning collapses
the whitespace either way), and the draws come from a generator seeded by the trainer's one caption draw per
item (`variation_rng`), so a resumed run draws the same variants.

Text embeddings: every variant is a new caption, so it cannot come from the text cache that was filled before
training. `CaptionVariantTexts` serves the cached captions from the cache and encodes the others with the text
encoder when a batch needs them (one caption per call, so a variant's embedding does not depend on what else is
in the batch), keeping the most recent ones in a small in-memory LRU; nothing is written to disk, so nothing
grows without bound. ai-toolkit encodes every caption at every step the same way. This needs the text encoder
loaded during training, so `train.cache_text_embeddings` / `unload_text_encoder` (which free it) are refused
with these keys (`option_checks.py`); ai-toolkit itself skips token dropout when text embeddings are cached.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cadence.data.captions import apply_trigger

if TYPE_CHECKING:
    from cadence.config.schema import DatasetConfig

log = logging.getLogger(__name__)

# variant embeddings kept in memory ([L, D] each: ~0.8 MB for a 100-token caption of Wan's umT5 in bf16)
VARIANT_CAPACITY = 128


@dataclass(frozen=True)
class CaptionVariation:
    """One dataset's token augmentation and how its trigger word is put in."""

    shuffle: bool = False
    dropout_rate: float = 0.0
    keep_tokens: int = 0
    trigger: str | None = None
    add_trigger: bool = True  # False for regularisation sets: [trigger] is replaced but never prepended

    @classmethod
    def of(cls, ds: DatasetConfig, trigger: str | None) -> CaptionVariation | None:
        """The dataset's variation, or None when it varies nothing (captions stay as read)."""
        if not ds.shuffle_tokens and ds.token_dropout_rate <= 0:
            return None
        return cls(ds.shuffle_tokens, ds.token_dropout_rate, ds.keep_tokens, trigger, not ds.is_reg)


def _tokens(text: str) -> list[str]:
    return [token.strip() for token in text.split(",") if token.strip()]


def vary_caption(text: str, variation: CaptionVariation, rng: random.Random) -> str:
    """One variant of the caption `text` (as read, before the trigger word), ai-toolkit's steps in order."""
    tokens = _tokens(text)
    rate = variation.dropout_rate
    if rate > 0:
        tokens = [
            token
            for i, token in enumerate(tokens)
            if i < variation.keep_tokens or (rate < 1 and rng.random() > rate)
        ]
    if variation.shuffle:
        rng.shuffle(tokens)
    caption = apply_trigger(", ".join(tokens), variation.trigger, add=variation.add_trigger)
    if variation.shuffle:
        tokens = _tokens(caption)
        rng.shuffle(tokens)
        caption = ", ".join(tokens)
    return caption


def variation_rng(draw: float, salt: int) -> random.Random:
    """A generator for one item's augmentation, seeded by its draw from the trainer's caption stream.

    The trainer draws exactly one number per item (caption dropout's); everything else an item varies derives
    from it, so the stream's position - and a resume, or another rank skipping this item - does not depend on
    how many tokens a caption has. `salt` keeps the item's separate choices independent."""
    return random.Random(int(draw * 2**53) * 4 + salt)


class CaptionVariantTexts:
    """Text embeddings for a batch: cached captions from the cache, token-augmented variants encoded now."""

    def __init__(
        self,
        cache: Any,
        encode: Callable[[list[str]], list[Any]],
        cached: Iterable[str],
        capacity: int = VARIANT_CAPACITY,
    ) -> None:
        self.cache = cache  # the run's TextCache (every caption as read, "" and the sample prompts)
        self.encode = encode  # the adapter's encode_prompts
        self.cached = frozenset(cached)
        self.capacity = capacity
        self._recent: OrderedDict[str, Any] = OrderedDict()
        self.encoded = 0  # variants run through the text encoder (a test and the log read it)

    def load(self, caption: str) -> Any:
        if caption in self.cached:
            return self.cache.load(caption)
        embed = self._recent.get(caption)
        if embed is not None:
            self._recent.move_to_end(caption)
            return embed
        embed = _to_cpu(self.encode([caption])[0])  # the cached embeddings are read to the CPU too
        self.encoded += 1
        self._recent[caption] = embed
        if len(self._recent) > self.capacity:
            self._recent.popitem(last=False)
        return embed


def _to_cpu(embed: Any) -> Any:
    if isinstance(embed, dict):  # a family whose text embedding is several tensors
        return {name: value.detach().to("cpu") for name, value in embed.items()}
    return embed.detach().to("cpu")


def with_caption_variants(texts: Any, items: Sequence[Any], encode: Callable[[list[str]], list[Any]]) -> Any:
    """`texts` itself when no item varies its caption, else a `CaptionVariantTexts` over it (the captions
    of `items` and "" are the cached ones)."""
    varied = sum(1 for item in items if getattr(item, "variation", None) is not None)
    if not varied:
        return texts
    log.info(
        "token augmentation (shuffle_tokens / token_dropout_rate) on %d items: varied captions are encoded when "
        "a batch needs them, the last %d kept in memory",
        varied,
        VARIANT_CAPACITY,
    )
    return CaptionVariantTexts(texts, encode, [item.caption for item in items] + [""])
