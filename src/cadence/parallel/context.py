"""The parallel context: what the trainer asks of "the other ranks", as one object.

`ParallelContext` is the world of one process: every verb returns its input or does nothing, so the
trainer's code is the same with and without torchrun. `DistributedContext` (built by `start_parallel` when
the launch variables describe several processes) implements the verbs with torch.distributed collectives.
`train.setup.build_training` is the one place that wires it into the parts; the loop calls the per-step
verbs. There is no `if rank == 0` elsewhere: the main rank's extra work (the one metrics line, the
checkpoint files, the run-folder lock, the health checks) is chosen here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from cadence.parallel.groups import GroupPlan
from cadence.parallel.world import World

if TYPE_CHECKING:
    from cadence.train.setup import TrainingSetup

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RowSlice:
    """This rank's rows [start, stop) of a global batch of `total` rows (the data-parallel group's)."""

    start: int
    stop: int
    total: int

    @property
    def after(self) -> int:
        return self.total - self.stop


def skip_draws(rng: Any, count: int) -> None:
    """Advance a caption-dropout stream past `count` items (each item draws exactly one number)."""
    for _ in range(count):
        rng.random()


def trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


class ParallelContext:
    """One process: rank 0 of a world of one. Every verb is a no-op."""

    def __init__(self, world: World | None = None, plan: GroupPlan | None = None) -> None:
        self.world = world or World()
        self.plan = plan
        self.expert: str | None = None  # expert parallel: the expert this rank trains
        self.sharded = False  # parallel.shard_base in force

    # ----------------------------------------------------------------------------------------- who
    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def group_size(self) -> int:
        """Ranks that train the same expert together (the data-parallel group)."""
        return 1

    @property
    def group_rank(self) -> int:
        return 0

    def describe(self) -> str:
        return "one process"

    # --------------------------------------------------------------------------------------- setup
    def device(self, base: torch.device) -> torch.device:
        return base

    def seed(self, seed: int) -> int:
        """The global (torch/numpy/random) seed of this rank: LoRA dropout draws differ per rank."""
        return seed + self.rank

    def on_main(self, work: Callable[[], T]) -> T:
        """Run `work` on the main rank only; the others get its result (or raise its exception)."""
        return work()

    def main_first(self, work: Callable[[], T]) -> T:
        """The main rank runs `work` first (it fills caches, cleans the folder); then the others run it."""
        return work()

    def replicate(self, networks: dict[str, torch.nn.Module]) -> None:
        """Every rank starts from the main rank's adapter weights."""

    def shard_frozen(self, adapter: Any) -> None:
        """parallel.shard_base: shard every expert's frozen blocks over the data-parallel group."""

    def main_only(self, value: T) -> T | None:
        return value if self.is_main else None

    def recorder(self, cfg: Any, paths: Any, checkpoints: Any) -> Any:
        from cadence.train.recorder import RunRecorder

        return RunRecorder(cfg, paths, checkpoints)

    def share_samples(self, sampler: Any) -> None:
        """Which samples this rank renders (all of them in one process)."""

    def logs(self, attach: Callable[[], logging.Handler]) -> Callable[[], None]:
        """Attach the run's log.txt (`attach`); returns what undoes it."""
        handler = attach()

        def detach() -> None:
            logging.getLogger().removeHandler(handler)
            handler.close()

        return detach

    # ------------------------------------------------------------------------------------ per step
    def trains(self, expert: str) -> bool:
        return True

    def resident(self, current: str) -> str:
        """The expert that stays on the accelerator with model.low_vram: the one training now."""
        return current

    def round_steps(self, first: int, total: int, router: Any) -> list[tuple[int, str]]:
        """The steps trained at once, each with its expert: one step in one process."""
        return [(first, router.current())]

    def rows(self, local: int) -> RowSlice:
        return RowSlice(0, local, local)

    def reduce_gradients(self, params: Sequence[torch.Tensor], finite: bool) -> bool:
        return finite

    def mean(self, values: list[float]) -> list[float]:
        return values

    def any(self, *flags: bool) -> tuple[bool, ...]:
        return tuple(bool(f) for f in flags)

    def main_value(self, value: T) -> T:
        return value

    def resample_needed(self, missing_here: bool) -> bool:
        return missing_here

    def share_round(self, setup: TrainingSetup, plan: list[tuple[int, str]], results: dict) -> dict:
        """Expert parallel: every rank learns every step's result and the other experts' new weights."""
        return results

    def barrier(self) -> None:
        """Wait for every rank (after samples: no rank enters the training collectives while one renders)."""

    # --------------------------------------------------------------------------------------- state
    def complete_state(self, state: dict[str, Any], setup: TrainingSetup) -> dict[str, Any]:
        state["world"] = {"world_size": 1, "layout": self.describe()}
        return state

    def restore_state(self, state: dict[str, Any], setup: TrainingSetup, step: int) -> None:
        """This rank's own random state from a checkpoint (one process: the saved global streams)."""
        saved = state.get("world", {}).get("world_size", 1)
        if saved != 1:
            log.warning(
                "resume: step %d was saved by %d processes, this run is one; it continues with rank 0's random "
                "streams and the same sampler position (docs/distributed.md)",
                step,
                saved,
            )

    def close(self) -> None:
        """End the process group (nothing in one process)."""


def clone_router(router: Any) -> Any:
    return copy.deepcopy(router)
