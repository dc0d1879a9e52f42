"""Regularisation sets (ai-toolkit's `datasets[].is_reg`): every other step trains on a batch of them.

ai-toolkit (`BaseSDTrainProcess.run`) keeps the `is_reg` datasets in a data loader of their own and takes every
micro-batch of an even step from it (odd steps from the training sets), except on steps that save or sample.
A regularisation item's caption gets no trigger word (`[trigger]` is still replaced) and its loss is multiplied
by `train.reg_weight` (times its dataset's `loss_multiplier`), as ai-toolkit does; both happen when the dataset
is indexed (`MediaItem.loss_weight`). Cadence differs in two ways, both to keep the mix what the user meant:

* **Per expert.** Steps alternate within each expert's own steps: an expert's 1st, 3rd, 5th ... steps train on
  the training sets, its 2nd, 4th ... on the regularisation sets. ai-toolkit alternates over the run's steps,
  so on Wan 2.2 A14B with `switch_boundary_every: 1` one expert would get every regularisation batch and the
  other none.
* **Save and sample steps are not special**: the data order does not depend on `save_every` /
  `sample_every`, so changing them across a resume changes nothing that was trained.

The two samplers are `BucketBatchSampler`s over the two subsets (the regularisation one with its own seed);
their positions and each expert's count of batches taken are the resume state, so a resumed run takes exactly
the batches an uninterrupted one would. A batch skipped because its cache entry vanished mid-run counts as
taken (the next batch then comes from the other kind).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cadence.data.media import MediaItem
from cadence.data.sampler import BucketBatchSampler

log = logging.getLogger(__name__)

REG_SEED_OFFSET = 7_919  # the regularisation sampler's seed: the job seed plus this


def _like(sampler: BucketBatchSampler, items: Sequence[MediaItem], seed: int) -> BucketBatchSampler:
    """A sampler over `items` batched as `sampler` is (batch size, drop_last, data-parallel shard)."""
    shards = getattr(sampler, "shards", 1)
    sharding = {"shards": shards, "shard": sampler.shard} if shards > 1 else {}
    return BucketBatchSampler(items, sampler.batch_size, seed, drop_last=sampler.drop_last, **sharding)


class RegularizedSampler:
    """Training batches and regularisation batches, alternating over each expert's own steps."""

    def __init__(
        self,
        items: Sequence[MediaItem],
        like: BucketBatchSampler,
        current_expert: Callable[[], str],
        accumulation: int,
    ) -> None:
        self.train_indices = [i for i, item in enumerate(items) if not item.is_reg]
        self.reg_indices = [i for i, item in enumerate(items) if item.is_reg]
        if not self.train_indices or not self.reg_indices:
            raise ValueError("RegularizedSampler needs training items and regularisation items")
        self.train = _like(like, [items[i] for i in self.train_indices], like.seed)
        self.reg = _like(like, [items[i] for i in self.reg_indices], like.seed + REG_SEED_OFFSET)
        self.current_expert = current_expert
        self.accumulation = accumulation
        self.taken: dict[str, int] = {}  # micro-batches taken per expert

    def is_reg_turn(self) -> bool:
        """Whether the next micro-batch of the current expert comes from the regularisation sets."""
        return (self.taken.get(self.current_expert(), 0) // self.accumulation) % 2 == 1

    def next_batch(self) -> list[int]:
        reg = self.is_reg_turn()
        expert = self.current_expert()
        self.taken[expert] = self.taken.get(expert, 0) + 1
        sampler, indices = (self.reg, self.reg_indices) if reg else (self.train, self.train_indices)
        return [indices[i] for i in sampler.next_batch()]

    def skip(self, count: int) -> None:
        """Move past `count` batches that other ranks train (expert parallel: the other expert's step)."""
        for _ in range(count):
            self.next_batch()

    def __len__(self) -> int:
        return len(self.train)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        train = self.train.state_dict()
        return {**train, "reg": self.reg.state_dict(), "taken": dict(self.taken)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` was taken; a checkpoint saved without regularisation sets restarts the
        alternation (the training sampler says what else changed)."""
        self.train.load_state_dict({k: v for k, v in state.items() if k not in ("reg", "taken")})
        if "reg" not in state:
            log.warning(
                "resume: the checkpoint was trained without regularisation sets (datasets[].is_reg); they join "
                "from now on, every other step of each expert"
            )
            self.taken = {}
            return
        self.reg.load_state_dict(state["reg"])
        self.taken = {str(k): int(v) for k, v in state["taken"].items()}


def with_regularization(
    sampler: Any, items: Sequence[MediaItem], current_expert: Callable[[], str], accumulation: int
) -> Any:
    """`sampler` itself when no item is a regularisation item, else a `RegularizedSampler` batching the same
    items the same way."""
    if not any(item.is_reg for item in items):
        return sampler
    regularized = RegularizedSampler(items, sampler, current_expert, accumulation)
    log.info(
        "regularisation sets: %d of %d training items; every other step of each expert trains on them",
        len(regularized.reg_indices),
        len(items),
    )
    return regularized
