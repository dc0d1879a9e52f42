"""Bucket batch sampler: deterministic for a seed, resumable mid-epoch, sharded over data-parallel ranks.

Each epoch: every item index appears `num_repeats` times; the list is shuffled with a generator seeded by
(seed, epoch); indices are grouped by bucket (keeping the shuffled order) and cut into *global* batches of
`batch_size * shards` (the data-parallel group trains one global batch per micro-step; `shards` is 1 in one
process). The last, smaller batch of a bucket is kept (drop_last=False, the default) so that items in small
buckets are still trained; set drop_last=True for strictly equal batch sizes. Batch order is then shuffled
with the same generator. Because an epoch is a pure function of (seed, epoch, global batch size), the state
is just (epoch, position) and resuming replays exactly the batches an uninterrupted run would have produced.

Sharding: rank `shard` takes rows [shard * batch_size, (shard + 1) * batch_size) of every global batch, so the
ranks together train exactly the batch one process with `batch_size * shards` would, each rank's rows from
one bucket (one tensor shape). With several shards a bucket's last, smaller global batch is filled up with
items from the start of that bucket's epoch order (as torch's DistributedSampler pads), so every rank
gets `batch_size` rows and no rank idles; drop_last=True drops it instead.
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
        shards: int = 1,
        shard: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
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
        self.shards = shards
        self.shard = shard
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._cache: tuple[tuple[int, int, int], list[list[int]]] | None = None
        if not self._epoch_batches(0):
            raise ValueError(
                f"no batch of {self.global_batch} items fits in any bucket; lower batch_size"
                + (" (or use fewer ranks)" if shards > 1 else "")
            )

    @property
    def global_batch(self) -> int:
        """Items per micro-step over all shards (what one process with this batch size would train)."""
        return self.batch_size * self.shards

    def _epoch_batches(self, epoch: int, global_batch: int | None = None, shards: int | None = None) -> list:
        size = self.global_batch if global_batch is None else global_batch
        pad = (self.shards if shards is None else shards) > 1
        key = (epoch, size, pad)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = [i for i, r in enumerate(self.repeats) for _ in range(r)]
        rng.shuffle(order)
        by_bucket: dict[Bucket, list[int]] = {}
        for i in order:
            by_bucket.setdefault(self.buckets[i], []).append(i)
        batches: list[list[int]] = []
        for members in by_bucket.values():
            for start in range(0, len(members), size):
                batch = members[start : start + size]
                if len(batch) < size and self.drop_last:
                    continue
                if len(batch) < size and pad:  # every shard gets a full local batch of this bucket
                    batch = batch + [members[k % len(members)] for k in range(size - len(batch))]
                batches.append(batch)
        rng.shuffle(batches)
        if global_batch is None:
            self._cache = (key, batches)
        return batches

    def __len__(self) -> int:
        """Global batches per epoch."""
        return len(self._epoch_batches(self.epoch))

    def next_batch(self) -> list[int]:
        """This shard's rows of the next global batch."""
        batches = self._epoch_batches(self.epoch)
        if self.position >= len(batches):
            self.epoch += 1
            self.position = 0
            batches = self._epoch_batches(self.epoch)
        batch = batches[self.position]
        self.position += 1
        if self.shards == 1:
            return list(batch)
        return list(batch[self.shard * self.batch_size : (self.shard + 1) * self.batch_size])

    def skip(self, count: int) -> None:
        """Move past `count` global batches that other ranks train (expert parallel: the other expert's step)."""
        for _ in range(count):
            self.next_batch()

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
            "shards": self.shards,
            "shard": self.shard,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where `state` was taken. If the dataset or seed changed since, the batch order
        cannot continue exactly: a warning says so and training goes on from a fresh epoch (the rest of the
        resumed state — weights, optimizer, phases — is kept). A changed global batch (batch size or number
        of data-parallel ranks) keeps the epoch: its remaining items are regrouped into the new global batch
        (`_regroup`)."""
        changed = [
            f"{key} {state[key]} -> {mine}"
            for key, mine in (("seed", self.seed), ("num_items", len(self.buckets)))
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
        old_shards = int(state.get("shards", 1))
        old_global = int(state.get("batch_size", self.batch_size)) * old_shards
        if old_global == self.global_batch and (old_shards > 1) == (self.shards > 1):
            self.position = int(state["position"])
            return
        self.position = self._regroup(int(state["position"]), old_global, old_shards)

    def _regroup(self, position: int, old_global: int, old_shards: int) -> int:
        """The position in this epoch's new global batches that has consumed as many item rows as `position`
        old ones did: the rest of the epoch is trained in the new grouping, so within this one epoch a few
        items can come twice or not at all; from the next epoch on every item appears num_repeats times."""
        old = self._epoch_batches(self.epoch, old_global, old_shards)
        new = self._epoch_batches(self.epoch)
        if old == new:  # e.g. 2 ranks x 1 -> 1 process x 2 over buckets without a smaller last batch
            return position
        consumed = sum(len(b) for b in old[:position])
        done, index = 0, 0
        while index < len(new) and done < consumed:
            done += len(new[index])
            index += 1
        log.warning(
            "the global batch changed since the checkpoint (%d -> %d items per micro-step: train.batch_size x "
            "data-parallel ranks): epoch %d continues after %d of its item rows, regrouped; within this epoch "
            "a few items may repeat or be left out (docs/distributed.md)",
            old_global,
            self.global_batch,
            self.epoch,
            consumed,
        )
        return index
