"""The world a process runs in, read from the variables `torchrun` (and `accelerate launch`, which runs
torchrun's launcher) set for each worker: WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT. Without them the process is a world of one. Nothing here imports torch.distributed: `cadence
validate` reports a malformed world before anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class WorldError(ValueError):
    """The launch variables do not describe a usable world; the message names the variable."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    def describe(self) -> str:
        if not self.distributed:
            return "one process (no torchrun/accelerate launch variables)"
        return (
            f"rank {self.rank} of {self.world_size} (local rank {self.local_rank} of {self.local_world_size} "
            f"on this machine, {self.nodes} machine(s))"
        )


def _integer(env: Mapping[str, str], name: str, default: int | None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise WorldError(f"{name} is not set; launch with torchrun (or accelerate launch), which sets it")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise WorldError(
            f"{name}={raw!r} is not a whole number; launch with torchrun, which sets it"
        ) from None
    if value < 0:
        raise WorldError(f"{name}={value} is negative")
    return value


def read_world(env: Mapping[str, str] | None = None) -> World:
    """The world from the launch variables; WorldError when they are set but inconsistent."""
    env = os.environ if env is None else env
    world_size = _integer(env, "WORLD_SIZE", 1)
    if world_size == 0:
        raise WorldError("WORLD_SIZE=0: a world needs at least one process")
    if world_size == 1:
        return World()
    rank = _integer(env, "RANK", None)
    local_rank = _integer(env, "LOCAL_RANK", None)
    local_world = _integer(env, "LOCAL_WORLD_SIZE", world_size)
    if rank >= world_size:
        raise WorldError(f"RANK={rank} is not below WORLD_SIZE={world_size}")
    if local_rank >= local_world:
        raise WorldError(f"LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world}")
    if world_size % local_world:
        raise WorldError(
            f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world}: every machine "
            "must start the same number of processes (torchrun --nproc_per_node)"
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise WorldError(f"{name} is not set; torchrun sets it from --rdzv_endpoint / --master_addr")
    return World(rank, world_size, local_rank, local_world)


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None when unset: every GPU of the machine is visible)."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [v.strip() for v in raw.split(",") if v.strip() and v.strip() != "-1"]
