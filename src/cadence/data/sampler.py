"""Bucket batch sampler: deterministic for a seed, resumable mid-epoch.

Each epoch: every item index appears `num_repeats` times; the list is shuffled with a generator seeded by
(seed, epoch); indices are grouped by bucket (keeping the shuffled order) and cut into batches of
`batch_size`. The last, smaller batch of a bucket is kept (drop_last=False, the default) so that items in
small buckets are still trained; set drop_last=True for strictly equal batch sizes. Batch order is then
shuffled with the same generator. Because an epoch is a pure function of (seed, epoch), the state is just
(epoch, position) and resuming replays exactly the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence

from cadence.data.media import Bucket, MediaItem

log = logging.getLogger(__name__)


class BucketBatchSampler:
    """Yields lists of item indices whose items share a bucket (width, height, num_frames). Infinite."""

    def __init__(
        self,
        items: Sequence[MediaItem],
        batch_size: int,
        seed: int,
        num_repeats: int | Sequence[int] | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not items:
            raise ValueError("BucketBatchSampler needs at least one item")
        self.buckets: list[Bucket] = [it.bucket for it in items]
        if num_repeats is None:
            self.repeats = [it.num_repeats for it in items]
        elif isinstance(num_repeats, int):
            self.repeats = [num_repeats] * len(items)
        else:
            self.repeats = list(num_repeats)
            if len(self.repeats) != len(items):
                raise ValueError(f"num_repeats has {len(self.repeats)} entries for {len(items)} items")
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        if not self._epoch_batches(0):
            raise ValueError(f"no batch of {batch_size} items fits in any bucket; lower batch_size")

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = [i for i, r in enumerate(self.repeats) for _ in range(r)]
        rng.shuffle(order)
        by_bucket: dict[Bucket, list[int]] = {}
        for i in order:
            by_bucket.setdefault(self.buckets[i], []).append(i)
        batches: list[list[int]] = []
        for members in by_bucket.values():
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        rng.shuffle(batches)
        self._cache = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._epoch_batches(self.epoch))

    def next_batch(self) -> list[int]:
        batches = self._epoch_batches(self.epoch)
        if self.position >= len(batches):
            self.epoch += 1
            self.position = 0
            batches = self._epoch_batches(self.epoch)
        batch = batches[self.position]
        self.position += 1
        return list(batch)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_items": len(self.buckets),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where `state` was taken. If the dataset, batch size or seed changed since, the
        batch order cannot continue exactly: a warning says so and training goes on from a fresh epoch (the
        rest of the resumed state — weights, optimizer, phases — is kept)."""
        changed = [
            f"{key} {state[key]} -> {mine}"
            for key, mine in (
                ("seed", self.seed),
                ("batch_size", self.batch_size),
                ("num_items", len(self.buckets)),
            )
            if key in state and int(state[key]) != mine
        ]
        if changed:
            log.warning(
                "the dataset or batching changed since the checkpoint (%s): resuming from a fresh epoch, so the "
                "batch order differs from an uninterrupted run",
                ", ".join(changed),
            )
            self.epoch, self.position = int(state["epoch"]) + 1, 0
            return
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
