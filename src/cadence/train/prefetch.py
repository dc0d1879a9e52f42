"""The next batch's cache entries, read on a background thread while the current step computes.

Why: the step loaded its batch synchronously (safetensors reads, the stack, a pageable copy to the GPU), so
the accelerator waited for the disk every step (issue 23). Here, as soon as a batch is taken, the one after
it is guessed and its latents and conditioning are read and stacked in the background, into pinned memory
when training on CUDA (the copy to the device is then asynchronous).

Exactness: the guess never moves the trainer's state. It asks the sampler for its next batch and puts the
sampler back (`state_dict` / `load_state_dict`, the protocol checkpoints use), advances the expert rotation
the same way when the next batch opens a new step, and takes the caption draws from a copy of the expert's
caption stream. The loop still takes every batch from the real sampler and stream, exactly as before, and
uses the loaded tensors only when its batch is the guessed one (same expert, items and stream state); a
wrong guess (a skipped step, expert parallel) only costs the wasted read. The random streams, their saved
state and exact resume are those of a run without prefetching. Text embeddings stay on the main thread:
token augmentation may run the text encoder to make them.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from cadence.data.cache import CacheMissError
from cadence.parallel.context import skip_draws

log = logging.getLogger(__name__)

Key = tuple[str, tuple[int, ...], Any]  # expert, item indices, caption stream state before the draws


class BatchPrefetcher:
    """One batch ahead: `guess_after` when a batch was taken, `hand_over` when the next one is drawn."""

    def __init__(self, setup: Any, accumulation: int) -> None:
        self.s = setup
        self.accumulation = accumulation
        self.pin = setup.device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cadence-prefetch")
        self._pending: tuple[Key, Future] | None = None
        self.hits = 0  # batches served from the background read
        self.misses = 0  # guesses that were not the batch drawn

    def guess_after(self, expert: str, micro_batch: int) -> None:
        """A batch was just taken for `expert`'s micro-batch `micro_batch` (0-based): read the next one."""
        self._drop()
        try:
            self._guess(micro_batch)
        except Exception as exc:  # noqa: BLE001 - a guess must never stop training; the loop reads it itself
            log.debug("prefetch: no guess for the next batch (%s: %s)", type(exc).__name__, exc)

    def _guess(self, micro_batch: int) -> None:
        s = self.s
        opens_step = micro_batch + 1 >= self.accumulation
        router_state = s.router.state_dict() if opens_step else None
        sampler_state = s.sampler.state_dict()
        try:
            if opens_step:
                s.router.advance()
            nxt = s.router.current()
            indices = s.sampler.next_batch()
        finally:
            s.sampler.load_state_dict(sampler_state)
            if router_state is not None:
                s.router.load_state_dict(router_state)
        captions = random.Random()
        captions.setstate(s.randomness.of(nxt).captions.getstate())
        skip_draws(captions, s.parallel.rows(len(indices)).start)
        key: Key = (nxt, tuple(indices), captions.getstate())
        self._pending = (key, self._pool.submit(self._read, list(indices), captions))

    def _read(self, indices: list[int], captions: random.Random) -> dict[str, torch.Tensor] | None:
        batches = self.s.batches
        items = [batches.items[i] for i in indices]
        draws = [captions.random() for _ in items]  # what assemble draws, on the copy
        try:
            return batches.load_latents(items, draws, pin=self.pin)
        except (CacheMissError, Exception) as exc:  # noqa: BLE001 - the loop's own read raises it, as before
            log.debug("prefetch: reading ahead failed (%s: %s)", type(exc).__name__, exc)
            return None

    def hand_over(self, expert: str, indices: list[int], captions: random.Random) -> None:
        """The batch about to be assembled: if it is the one read ahead, the assembler gets its tensors."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        key, future = pending
        state = captions.getstate()
        if key != (expert, tuple(indices), state):
            future.cancel()
            self.misses += 1
            return
        stacked = future.result()
        if stacked is not None:
            self.hits += 1
            self.s.batches.preload(indices, state, stacked)

    def _drop(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None

    def close(self) -> None:
        self._drop()
        self._pool.shutdown(wait=True)
        if self.hits or self.misses:
            log.debug("prefetch: %d batches read ahead, %d guesses missed", self.hits, self.misses)
